package launcher

import (
	"slices"
	"strings"
	"testing"

	"github.com/minivirt/minivirt/pkg/domain"
)

var testEnv = Env{QEMU: "/usr/bin/qemu-system-x86_64", Self: "/usr/bin/minivirt", RunDir: "/run/minivirt/t", LogDir: "/var/lib/minivirt/logs",
	NVRAM: "/var/lib/minivirt/nvram/t_VARS.fd", OVMFCode: DefaultOVMFCode, OVMFVars: DefaultOVMFVars}

func parse(t *testing.T, devices string, extra ...string) *domain.Domain {
	t.Helper()
	return parseWith(t, devices, strings.Join(extra, ""), "")
}

// parseWith parses a test domain with devices, extra top-level elements,
// and an <os> of its own (empty: direct kernel boot of /k).
func parseWith(t *testing.T, devices, top, os string) *domain.Domain {
	t.Helper()
	if os == "" {
		os = `<os><kernel>/k</kernel></os>`
	}
	xml := `<domain type='qemu'><name>t</name><uuid>6c3b1f0e-8a4d-4f6b-9c2e-1d7a5b3e9f40</uuid><memory unit='MiB'>128</memory>` + top +
		os + `<devices>` + devices + `</devices></domain>`
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
	for _, flag := range []string{"-S", "-no-reboot", "-nodefaults"} {
		if !slices.Contains(p.Argv, flag) {
			t.Errorf("argv lacks %s: %q", flag, p.Argv)
		}
	}
	// on_poweroff destroy: QEMU exits on the guest's power-off by itself,
	// so a guest that powers off while unsupervised leaves no QEMU.
	if slices.Contains(p.Argv, "-no-shutdown") || !p.ExitsOnPoweroff {
		t.Errorf("on_poweroff destroy: -no-shutdown given or ExitsOnPoweroff unset: %q", p.Argv)
	}
	if got := optionAfter(p.Argv, "-pidfile", 0); got != "/run/minivirt/t/qemu.pid" {
		t.Errorf("-pidfile = %q", got)
	}
	for _, policy := range []string{"restart", "preserve"} {
		d := parse(t, "", "<on_poweroff>"+policy+"</on_poweroff>")
		p, err := Build(d, testEnv)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(p.Argv, "-no-shutdown") || p.ExitsOnPoweroff {
			t.Errorf("on_poweroff %s: QEMU must stay for the supervisor: %q", policy, p.Argv)
		}
	}
	if p.Argv[0] != testEnv.QEMU {
		t.Errorf("argv[0] = %q", p.Argv[0])
	}
	// QMP and QEMU's end of the serial console are inherited listeners,
	// fds 3 and 4; the supervisor shares the console among clients.
	if len(p.Sockets) != 2 || p.Sockets[0] != (Socket{"/run/minivirt/t/qmp.sock", 3}) || p.Sockets[1] != (Socket{"/run/minivirt/t/qemu-console.sock", 4}) {
		t.Errorf("Sockets = %+v", p.Sockets)
	}
	if got := optionAfter(p.Argv, "-chardev", 1); got != "socket,id=serial0,fd=4,server=on,wait=off,logfile=/var/lib/minivirt/logs/t.log,logappend=on" {
		t.Errorf("console chardev = %q", got)
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

// TestBuildDevices: each element minivirt acts on becomes exactly this
// QEMU option.
func TestBuildDevices(t *testing.T) {
	const helper = "'/usr/bin/minivirt' '__vmchannel-helper' '/run/minivirt/t/relay.sock'"
	vmchannel := `<interface type='vmchannel'><source port='600'/><target path='/s.sock'/></interface>`
	tests := []struct {
		name, devices, top, flag, want string
	}{
		{"virtio disk", `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/d.qcow2'/><target dev='vda' bus='virtio'/></disk>`, "",
			"-drive", "file=/d.qcow2,format=qcow2,if=none,id=drive-vda,auto-read-only=off"},
		{"virtio disk device", `<disk type='file' device='disk'><source file='/d.img'/><target dev='vda' bus='virtio'/></disk>`, "",
			"-device", "virtio-blk-pci,drive=drive-vda,id=vda"},
		{"block disk", `<disk type='block' device='disk'><source dev='/dev/loop7'/><target dev='vdb'/></disk>`, "",
			"-drive", "file=/dev/loop7,format=raw,if=none,id=drive-vdb,auto-read-only=off"},
		{"disk options", `<disk type='file'><driver name='qemu' type='raw' cache='none' io='native' discard='unmap' detect_zeroes='unmap' error_policy='enospace' rerror_policy='report'/><source file='/d'/><target dev='vda'/></disk>`, "",
			"-drive", "file=/d,format=raw,if=none,id=drive-vda,auto-read-only=off,cache=none,aio=native,discard=unmap,detect-zeroes=unmap,werror=enospc,rerror=report"},
		{"readonly, shareable, serial, boot order", `<disk type='file'><source file='/d'/><target dev='vda'/><readonly/><shareable/><serial>SN-1</serial><boot order='2'/></disk>`, "",
			"-device", "virtio-blk-pci,drive=drive-vda,id=vda,serial=SN-1,share-rw=on,bootindex=2"},
		{"transient", `<disk type='file'><driver name='qemu' type='qcow2'/><source file='/base.qcow2'/><target dev='vda'/><transient/></disk>`, "",
			"-drive", "file=/base.qcow2,format=qcow2,if=none,id=drive-vda,auto-read-only=off,snapshot=on"},
		{"cdrom", `<disk type='file' device='cdrom'><source file='/c.iso'/><target dev='hdc' bus='ide'/></disk>`, "",
			"-drive", "file=/c.iso,format=raw,if=none,id=drive-hdc,auto-read-only=off,readonly=on,media=cdrom"},
		{"cdrom device on q35", `<disk type='file' device='cdrom'><source file='/c.iso'/><target dev='sda' bus='sata'/></disk>`, "",
			"-device", "ide-cd,drive=drive-sda,id=sda,bus=ide.0"},
		{"user nic device", `<interface type='user'><mac address='52:54:00:12:34:56'/><model type='e1000'/><boot order='1'/></interface>`, "",
			"-device", "e1000,netdev=net0,mac=52:54:00:12:34:56,bootindex=1"},
		{"vmchannel only: netstack on vhost-user", vmchannel, "",
			"-netdev", "vhost-user,id=net0,chardev=charnet0"},
		{"vhost-user: QEMU connects to the supervisor's socket", vmchannel, "",
			"-chardev", "socket,id=charnet0,path=/run/minivirt/t/net.sock"},
		{"vhost-user: the guest's RAM is a shared memfd", vmchannel, "",
			"-object", "memory-backend-memfd,id=pc.ram,size=128M,share=on"},
		{"netstack on the stream backend, asked for", vmchannel, `<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1' backend='stream'/></metadata>`,
			"-netdev", "stream,id=net0,server=off,addr.type=fd,addr.str=5"},
		{"netstack on the stream backend: private memory", vmchannel, `<memoryBacking><access mode='private'/></memoryBacking>`,
			"-netdev", "stream,id=net0,server=off,addr.type=fd,addr.str=5"},
		{"netstack: full sandbox", vmchannel, "",
			"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"},
		{"slirp: the sandbox lets QEMU spawn", vmchannel + `<vmchannels network='slirp'/>`, "",
			"-sandbox", "on,obsolete=deny,resourcecontrol=deny"},
		{"vmchannel on slirp isolates", vmchannel + `<vmchannels network='slirp'/>`, "",
			"-netdev", "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.4:600-cmd:" + helper + " '10.0.2.4:600' '/s.sock'"},
		{"vmchannel with user nic: NAT", `<interface type='user'/><channel type='unix'><source mode='connect' path='/g.sock'/><target type='guestfwd' address='10.0.2.9' port='7'/></channel>`, "",
			"-netdev", "user,id=net0,guestfwd=tcp:10.0.2.9:7-cmd:" + helper + " '10.0.2.9:7' '/g.sock'"},
		{"virtio-serial", `<channel type='unix'><source mode='bind' path='/a.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`, "",
			"-chardev", "socket,id=channel0,fd=5,server=on,wait=off"},
		{"virtio-serial port", `<channel type='unix'><source mode='bind' path='/a.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`, "",
			"-device", "virtserialport,bus=virtio-serial0.0,nr=1,chardev=channel0,name=org.qemu.guest_agent.0"},
		{"virtio console: hvc0", `<console type='pty'><target type='virtio'/></console>`, "",
			"-device", "virtconsole,bus=virtio-serial0.0,chardev=console0,id=console0"},
		{"virtio console is the logged console", `<console type='pty'><target type='virtio'/></console>`, "",
			"-chardev", "socket,id=console0,fd=4,server=on,wait=off,logfile=/var/lib/minivirt/logs/t.log,logappend=on"},
		{"second serial to a file, logged", `<serial type='pty'/><serial type='file'><source path='/tmp/s1'/><log file='/tmp/s1.log' append='on'/></serial>`, "",
			"-chardev", "file,id=serial1,path=/tmp/s1,logfile=/tmp/s1.log,logappend=on"},
		{"serial to a unix socket", `<serial type='unix'><source mode='bind' path='/tmp/s.sock'/></serial>`, "",
			"-chardev", "socket,id=serial0,path=/tmp/s.sock,server=on,wait=off"},
		{"vcpu current", "", `<vcpu current='2'>4</vcpu>`,
			"-smp", "2,maxcpus=4"},
		{"cpu topology and model", "", `<vcpu>4</vcpu><cpu mode='custom'><model>qemu64</model><topology sockets='1' cores='2' threads='2'/><feature policy='require' name='sse4.2'/><feature policy='disable' name='svm'/></cpu>`,
			"-cpu", "qemu64,+sse4.2,-svm"},
		{"boot dev order", `<disk type='file' device='cdrom'><source file='/c.iso'/><target dev='sda' bus='sata'/></disk>`, `<os><boot dev='cdrom'/><boot dev='hd'/><bootmenu enable='yes'/></os>`,
			"-boot", "order=dc,menu=on"},
		{"clock", "", `<clock offset='localtime'><timer name='rtc' tickpolicy='catchup'/><timer name='hpet' present='no'/></clock>`,
			"-rtc", "base=localtime,driftfix=slew"},
		{"hpet off, vmport off", "", `<features><acpi/><apic/><vmport state='off'/></features><clock offset='utc'><timer name='hpet' present='no'/></clock>`,
			"-machine", "q35,vmport=off,hpet=off"},
		{"pm", "", `<pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>`,
			"-global", "ICH9-LPC.disable_s4=1"},
		{"uefi", "", `<os firmware='efi'></os>`,
			"-drive", "if=pflash,format=raw,unit=1,file=/var/lib/minivirt/nvram/t_VARS.fd"},
		{"usb and root ports", `<controller type='usb' model='qemu-xhci' ports='15'/><controller type='pci' model='pcie-root'/><controller type='pci' model='pcie-root-port'/>`, "",
			"-device", "pcie-root-port,id=pci.1,chassis=1"},
		{"qemu-xhci ports", `<controller type='usb' model='qemu-xhci' ports='15'/>`, "",
			"-device", "qemu-xhci,id=usb0,p2=15,p3=15"},
		{"rng and balloon", `<memballoon model='virtio'/><rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>`, "",
			"-object", "rng-random,id=objrng0,filename=/dev/urandom"},
		{"pci address", `<disk type='file'><source file='/d'/><target dev='vda' bus='virtio'/><address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/></disk>`, "",
			"-device", "virtio-blk-pci,drive=drive-vda,id=vda,addr=0x07.0"},
		{"drive address that agrees", `<disk type='file' device='cdrom'><source file='/c.iso'/><target dev='hdc' bus='ide'/><address type='drive' controller='0' bus='1' target='0' unit='0'/></disk>`, `<os><type machine='pc'>hvm</type><kernel>/k</kernel></os>`,
			"-device", "ide-cd,drive=drive-hdc,id=hdc,bus=ide.1,unit=0"},
		{"netstack MTU", vmchannel, `<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1' mtu='1500'/></metadata>`,
			"-device", "virtio-net-pci,netdev=net0,host_mtu=1500,vectors=0"},
		{"portForward as hostfwd", `<interface type='user'><portForward proto='tcp' address='127.0.0.1'><range start='2222' to='22'/></portForward></interface>`, "",
			"-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"},
		{"video", `<video><model type='vga' vram='16384' heads='1' primary='yes'/></video>`, "",
			"-device", "VGA,id=video0,vgamem_mb=16"},
		{"usb tablet gets a bus", `<input type='tablet' bus='usb'/><input type='mouse' bus='ps2'/>`, "",
			"-device", "qemu-xhci,id=usb-input"},
		{"sound", `<sound model='ich9'><codec type='micro'/></sound>`, "",
			"-device", "hda-micro,bus=sound0.0,audiodev=snd0"},
		{"qemu:commandline", "", `<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-device'/><qemu:arg value='virtio-rng-pci,id=extra'/></qemu:commandline>`,
			"-device", "virtio-rng-pci,id=extra"},
	}
	for _, tt := range tests {
		top, os := tt.top, ""
		if strings.HasPrefix(top, "<os") { // replaces the default <os>
			os, top = tt.top, ""
		}
		p, err := Build(parseWith(t, tt.devices, top, os), testEnv)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var values []string
		for i := 0; i+1 < len(p.Argv); i++ {
			if p.Argv[i] == tt.flag {
				values = append(values, p.Argv[i+1])
			}
		}
		if !slices.Contains(values, tt.want) {
			t.Errorf("%s: no %s %q among %q", tt.name, tt.flag, tt.want, values)
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

// TestNeedsFilesystem: QEMU is confined to an empty directory unless it
// spawns the vmchannel helper, runs <qemu:commandline> or serves 9p.
func TestNeedsFilesystem(t *testing.T) {
	for _, tt := range []struct {
		name, devices string
		want          bool
	}{
		{"no vmchannels", ``, false},
		{"netstack vmchannel", `<interface type='vmchannel'><source port='600'/><target path='/run/s.sock'/></interface>`, false},
		{"slirp vmchannel", `<interface type='user'/><interface type='vmchannel'><source port='600'/><target path='/run/s.sock'/></interface>`, true},
		{"9p share", `<filesystem type='mount'><source dir='/srv'/><target dir='s'/></filesystem>`, true},
		{"virtiofs share", `<filesystem type='mount'><driver type='virtiofs'/><source dir='/srv'/><target dir='s'/></filesystem>`, false},
	} {
		if got := NeedsFilesystem(parse(t, tt.devices)); got != tt.want {
			t.Errorf("%s: NeedsFilesystem %v; want %v", tt.name, got, tt.want)
		}
	}
}
