package launcher

import (
	"slices"
	"strings"
	"testing"

	"github.com/minivirt/minivirt/pkg/domain"
)

var testEnv = Env{QEMU: "/usr/bin/qemu-system-x86_64", Self: "/usr/bin/minivirt", RunDir: "/run/minivirt/t", LogDir: "/var/lib/minivirt/logs"}

func parse(t *testing.T, devices string, extra ...string) *domain.Domain {
	t.Helper()
	top := strings.Join(extra, "")
	xml := `<domain type='qemu'><name>t</name><uuid>6c3b1f0e-8a4d-4f6b-9c2e-1d7a5b3e9f40</uuid><memory unit='MiB'>128</memory>` + top +
		`<os><kernel>/k</kernel></os><devices>` + devices + `</devices></domain>`
	d, err := domain.Parse(strings.NewReader(xml))
	if err == nil {
		err = d.Validate()
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, xml)
	}
	return d
}

// optionAfter returns the argument that follows the n-th occurrence of flag.
func optionAfter(argv []string, flag string, n int) string {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			if n == 0 {
				return argv[i+1]
			}
			n--
		}
	}
	return ""
}

// splitOpts splits a QEMU option string as QemuOpts does: a single comma
// separates, a doubled comma is a literal one.
func splitOpts(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	return append(out, cur.String())
}

// shellSplit splits words as g_shell_parse_argv does for the forms
// shellQuote writes: single-quoted runs, backslash escapes, blanks.
func shellSplit(t *testing.T, s string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				t.Fatalf("unterminated quote in %q", s)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '\\' && i+1 < len(s):
			cur.WriteByte(s[i+1])
			i++
			inWord = true
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

func TestBuildBase(t *testing.T) {
	d := parse(t, "", "<vcpu>2</vcpu><on_reboot>destroy</on_reboot>")
	p, err := Build(d, testEnv)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{
		{"-machine", "q35"}, {"-accel", "tcg"}, {"-cpu", "max"}, {"-m", "128"}, {"-smp", "2"},
		{"-uuid", "6c3b1f0e-8a4d-4f6b-9c2e-1d7a5b3e9f40"}, {"-kernel", "/k"}, {"-action", "panic=pause"},
	}
	for _, w := range want {
		if got := optionAfter(p.Argv, w[0], 0); got != w[1] {
			t.Errorf("%s = %q; want %q", w[0], got, w[1])
		}
	}
	for _, flag := range []string{"-S", "-no-shutdown", "-no-reboot", "-nodefaults"} {
		if !slices.Contains(p.Argv, flag) {
			t.Errorf("argv lacks %s: %q", flag, p.Argv)
		}
	}
	if p.Argv[0] != testEnv.QEMU {
		t.Errorf("argv[0] = %q", p.Argv[0])
	}
	// QMP and the serial console are inherited listeners, fds 3 and 4.
	if len(p.Sockets) != 2 || p.Sockets[0] != (Socket{"/run/minivirt/t/qmp.sock", 3}) || p.Sockets[1] != (Socket{"/run/minivirt/t/console.sock", 4}) {
		t.Errorf("Sockets = %+v", p.Sockets)
	}
	if got := optionAfter(p.Argv, "-chardev", 0); got != "socket,id=monitor,fd=3,server=on,wait=off" {
		t.Errorf("monitor chardev = %q", got)
	}
	if got := optionAfter(p.Argv, "-netdev", 0); got != "" {
		t.Errorf("a domain without interfaces has a netdev %q", got)
	}
}

func TestBuildAccel(t *testing.T) {
	kvm := parse(t, "")
	kvm.Type = "kvm"
	tests := []struct {
		name     string
		d        *domain.Domain
		usable   bool
		accel    string
		cpu      string
		warnings int
	}{
		{"kvm usable", kvm, true, "kvm", "host", 0},
		{"kvm not usable", kvm, false, "tcg", "max", 1},
		{"qemu type", parse(t, ""), true, "tcg", "max", 0},
	}
	for _, tt := range tests {
		env := testEnv
		env.KVM, env.KVMReason = tt.usable, "no vmx"
		p, err := Build(tt.d, env)
		if err != nil {
			t.Fatal(err)
		}
		if p.Accel != tt.accel || optionAfter(p.Argv, "-accel", 0) != tt.accel || optionAfter(p.Argv, "-cpu", 0) != tt.cpu || len(p.Warnings) != tt.warnings {
			t.Errorf("%s: accel %s, -cpu %s, warnings %q", tt.name, p.Accel, optionAfter(p.Argv, "-cpu", 0), p.Warnings)
		}
	}
}

func TestBuildDevices(t *testing.T) {
	tests := []struct {
		name    string
		devices string
		flag    string
		nth     int
		want    string
	}{
		{"virtio disk", `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/d.qcow2'/><target dev='vda' bus='virtio'/></disk>`,
			"-drive", 0, "file=/d.qcow2,format=qcow2,if=none,id=drive-vda"},
		{"virtio disk device", `<disk type='file' device='disk'><source file='/d.img'/><target dev='vda' bus='virtio'/></disk>`,
			"-device", 0, "virtio-blk-pci,drive=drive-vda"},
		{"cdrom", `<disk type='file' device='cdrom'><source file='/c.iso'/><target dev='hdc' bus='ide'/></disk>`,
			"-drive", 0, "file=/c.iso,format=raw,if=none,id=drive-hdc,readonly=on"},
		{"cdrom device", `<disk type='file' device='cdrom'><source file='/c.iso'/><target dev='hdc' bus='ide'/></disk>`,
			"-device", 0, "ide-cd,drive=drive-hdc,bus=ide.0"},
		{"user nic", `<interface type='user'><mac address='52:54:00:12:34:56'/><model type='e1000'/></interface>`,
			"-netdev", 0, "user,id=net0"},
		{"user nic device", `<interface type='user'><mac address='52:54:00:12:34:56'/><model type='e1000'/></interface>`,
			"-device", 0, "e1000,netdev=net0,mac=52:54:00:12:34:56"},
		{"vmchannel only: netstack", `<interface type='vmchannel'><source port='600'/><target path='/s.sock'/></interface>`,
			"-netdev", 0, "stream,id=net0,server=off,addr.type=fd,addr.str=5"},
		{"netstack: full sandbox", `<interface type='vmchannel'><source port='600'/><target path='/s.sock'/></interface>`,
			"-sandbox", 0, "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"},
		{"slirp: the sandbox lets QEMU spawn", `<interface type='vmchannel'><source port='600'/><target path='/s.sock'/></interface><vmchannels network='slirp'/>`,
			"-sandbox", 0, "on,obsolete=deny,resourcecontrol=deny"},
		{"vmchannel on slirp isolates", `<interface type='vmchannel'><source port='600'/><target path='/s.sock'/></interface><vmchannels network='slirp'/>`,
			"-netdev", 0, "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.4:600-cmd:'/usr/bin/minivirt' '__vmchannel-helper' '/run/minivirt/t/relay.sock' '10.0.2.4:600' '/s.sock'"},
		{"vmchannel with user nic: NAT", `<interface type='user'/><channel type='unix'><source mode='connect' path='/g.sock'/><target type='guestfwd' address='10.0.2.9' port='7'/></channel>`,
			"-netdev", 0, "user,id=net0,guestfwd=tcp:10.0.2.9:7-cmd:'/usr/bin/minivirt' '__vmchannel-helper' '/run/minivirt/t/relay.sock' '10.0.2.9:7' '/g.sock'"},
		{"virtio-serial", `<channel type='unix'><source mode='bind' path='/a.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`,
			"-chardev", 2, "socket,id=channel0,fd=5,server=on,wait=off"},
		{"virtio-serial port", `<channel type='unix'><source mode='bind' path='/a.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`,
			"-device", 1, "virtserialport,bus=virtio-serial0.0,nr=1,chardev=channel0,name=org.qemu.guest_agent.0"},
	}
	for _, tt := range tests {
		p, err := Build(parse(t, tt.devices), testEnv)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := optionAfter(p.Argv, tt.flag, tt.nth); got != tt.want {
			t.Errorf("%s: %s #%d = %q; want %q", tt.name, tt.flag, tt.nth, got, tt.want)
		}
	}
}

// TestBuildHostilePaths: paths with spaces, commas, quotes and a leading
// '-' reach QEMU and the helper's argv exactly as written.
func TestBuildHostilePaths(t *testing.T) {
	paths := []string{"/tmp/a b.sock", "/tmp/a,b.sock", "/tmp/it's.sock", `/tmp/"q".sock`, "/-rf", "/tmp/,,x,", `/tmp/a\b`}
	for _, path := range paths {
		env := testEnv
		env.Self = "/opt/mini virt,'x'/minivirt"
		env.LogDir = "/var/log/a,b"
		d := parse(t, `<interface type='vmchannel'><source port='600'/><target path='`+xmlEscape(path)+`'/></interface><vmchannels network='slirp'/>
<disk type='file' device='disk'><source file='`+xmlEscape(path)+`'/><target dev='vda' bus='virtio'/></disk>`)
		p, err := Build(d, env)
		if err != nil {
			t.Fatalf("%q: %v", path, err)
		}
		// The disk: QemuOpts gives back the path whole.
		drive := splitOpts(optionAfter(p.Argv, "-drive", 0))
		if drive[0] != "file="+path {
			t.Errorf("%q: -drive splits to %q", path, drive)
		}
		// The serial log path survives QemuOpts too.
		serial := splitOpts(optionAfter(p.Argv, "-chardev", 1))
		if !slices.Contains(serial, "logfile=/var/log/a,b/t.log") {
			t.Errorf("%q: serial chardev splits to %q", path, serial)
		}
		// The vmchannel: QemuOpts, then guestfwd's cmd:, then g_shell_parse_argv.
		netdev := splitOpts(optionAfter(p.Argv, "-netdev", 0))
		var rule string
		for _, o := range netdev {
			if strings.HasPrefix(o, "guestfwd=") {
				rule = strings.TrimPrefix(o, "guestfwd=")
			}
		}
		cmd, ok := strings.CutPrefix(rule, "tcp:10.0.2.4:600-cmd:")
		if !ok {
			t.Fatalf("%q: guestfwd rule %q", path, rule)
		}
		want := []string{env.Self, HelperCommand, "/run/minivirt/t/relay.sock", "10.0.2.4:600", path}
		if got := shellSplit(t, cmd); !slices.Equal(got, want) {
			t.Errorf("%q: helper argv %q; want %q", path, got, want)
		}
	}
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "'", "&apos;", `"`, "&quot;", "<", "&lt;").Replace(s)
}

func TestBuildLimits(t *testing.T) {
	env := testEnv
	env.RunDir = "/" + strings.Repeat("r", 100)
	if _, err := Build(parse(t, ""), env); err == nil || !strings.Contains(err.Error(), "shorter --run-dir") {
		t.Errorf("a long run dir: %v", err)
	}
	env = testEnv
	env.Self = "/" + strings.Repeat("m", 1000)
	d := parse(t, `<interface type='vmchannel'><source port='600'/><target path='/s'/></interface><vmchannels network='slirp'/>`)
	if _, err := Build(d, env); err == nil || !strings.Contains(err.Error(), "over the 1023") {
		t.Errorf("a guestfwd rule over 1023 bytes: %v", err)
	}
}

func TestCPUHasVirt(t *testing.T) {
	tests := []struct {
		cpuinfo string
		want    bool
	}{
		{"processor\t: 0\nflags\t\t: fpu vme de pse vmx ept\n", true},
		{"flags\t\t: fpu svm npt\n", true},
		{"flags\t\t: fpu vme de pse tsc hypervisor\n", false}, // a PVM host: /dev/kvm opens, no vmx/svm
		{"flags\t\t: fpu vmxnet\n", false},
		{"", false},
	}
	for _, tt := range tests {
		if got, why := cpuHasVirt([]byte(tt.cpuinfo)); got != tt.want || (!got && why == "") {
			t.Errorf("cpuHasVirt(%q) = %v, %q; want %v", tt.cpuinfo, got, why, tt.want)
		}
	}
	if ok, _ := DetectKVM(func(string) string { return "tcg" }); ok {
		t.Error("MINIVIRT_ACCEL=tcg did not force TCG")
	}
	if ok, _ := DetectKVM(func(string) string { return "kvm" }); !ok {
		t.Error("MINIVIRT_ACCEL=kvm did not force KVM")
	}
}
