package domain

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// minimal returns a valid domain XML with extra placed inside <devices>.
func minimal(devices string) string {
	return `<domain type='qemu'><name>t</name><memory unit='MiB'>64</memory>
<os><kernel>/k</kernel></os><devices>` + devices + `</devices></domain>`
}

func mustParse(t *testing.T, s string) *Domain {
	t.Helper()
	d, err := Parse(strings.NewReader(s))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if err := d.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return d
}

func TestRejects(t *testing.T) {
	long := "/" + strings.Repeat("a", 107) // 108 bytes
	tests := []struct {
		name, xml, want string
	}{
		{"malformed", `<domain type='qemu'><name>x</name>`, "XML: "},
		{"empty", ``, "XML: empty document"},
		{"two roots", minimal("") + `<domain/>`, "more than one root"},
		{"no name", `<domain type='qemu'><memory>1024</memory><os><kernel>/k</kernel></os></domain>`, `name "": must be`},
		{"slash in name", strings.Replace(minimal(""), "<name>t</name>", "<name>a/b</name>", 1), `name "a/b"`},
		{"65 char name", strings.Replace(minimal(""), "<name>t</name>", "<name>"+strings.Repeat("n", 65)+"</name>", 1), "must be 1-64 characters"},
		{"bad type", strings.Replace(minimal(""), "type='qemu'", "type='xen'", 1), `domain type "xen"`},
		{"zero memory", strings.Replace(minimal(""), ">64<", ">0<", 1), "memory 0 KiB: must be greater than 0"},
		{"bad unit", strings.Replace(minimal(""), "MiB", "XB", 1), `memory unit "XB": unknown`},
		{"zero vcpu", strings.Replace(minimal(""), "<os>", "<vcpu>0</vcpu><os>", 1), "vcpu 0: must be 1-255"},
		{"bad uuid", strings.Replace(minimal(""), "<os>", "<uuid>nope</uuid><os>", 1), `uuid "nope"`},
		{"relative kernel", strings.Replace(minimal(""), "/k", "vmlinuz", 1), `os kernel "vmlinuz": must be an absolute path`},
		{"bad on_crash", strings.Replace(minimal(""), "<devices>", "<on_crash>explode</on_crash><devices>", 1), `on_crash "explode"`},
		{"port 0", minimal(`<interface type='vmchannel'><source port='0'/><target path='/s'/></interface>`), "vmchannel port 0: must be 1-65535"},
		{"port 65536", minimal(`<interface type='vmchannel'><source port='65536'/><target path='/s'/></interface>`), "vmchannel port 65536: must be 1-65535"},
		{"port 70000", minimal(`<interface type='vmchannel'><source port='70000'/><target path='/s'/></interface>`), "vmchannel port 70000: must be 1-65535"},
		{"duplicate port", minimal(`<interface type='vmchannel'><source port='600'/><target path='/s'/></interface>
<channel type='unix'><source mode='connect' path='/t'/><target type='guestfwd' address='10.0.2.4' port='600'/></channel>`), "vmchannel port 600: used twice on address 10.0.2.4"},
		{"relative path", minimal(`<interface type='vmchannel'><source port='600'/><target path='s.sock'/></interface>`), `vmchannel port 600 path "s.sock": must be an absolute path`},
		{"long path", minimal(`<interface type='vmchannel'><source port='600'/><target path='` + long + `'/></interface>`), "108 bytes, longer than the 107"},
		{"gateway", minimal(`<interface type='vmchannel'><source address='10.0.2.2' port='600'/><target path='/s'/></interface>`), "10.0.2.2: is the user network's gateway"},
		{"dns", minimal(`<interface type='vmchannel'><source address='10.0.2.3' port='600'/><target path='/s'/></interface>`), "DNS server"},
		{"dhcp range", minimal(`<interface type='vmchannel'><source address='10.0.2.15' port='600'/><target path='/s'/></interface>`), "DHCP range"},
		{"outside", minimal(`<interface type='vmchannel'><source address='192.168.1.4' port='600'/><target path='/s'/></interface>`), "outside the user network"},
		{"ipv6", minimal(`<interface type='vmchannel'><source address='::1' port='600'/><target path='/s'/></interface>`), "must be an IPv4 address"},
		{"bad proxy", minimal(`<interface type='vmchannel'><source port='600'/><target path='/s' proxy='v1'/></interface>`), `proxy "v1"`},
		{"bad limit", minimal(`<interface type='vmchannel'><source port='600'/><target path='/s' maxconnections='0'/></interface>`), `maxconnections 0: must be 1-65535`},
		{"no target", minimal(`<interface type='vmchannel'><source port='600'/></interface>`), "missing <target path=''/>"},
		{"unknown element", minimal(`<disk type='file'><source file='/i'/><target dev='vda'/><frobnicate/></disk>`), `<devices/disk/frobnicate>: not part of libvirt's domain XML`},
		{"unknown attribute", minimal(`<disk type='file' colour='red'><source file='/i'/><target dev='vda'/></disk>`), `attribute colour of <devices/disk>`},
		{"two names", strings.Replace(minimal(""), "<name>t</name>", "<name>t</name><name>u</name>", 1), `<name>: given 2 times where libvirt takes one`},
		{"efi secure boot", strings.Replace(minimal(""), "<os>", "<os firmware='efi'><loader secure='yes'/>", 1), `Secure Boot`},
		{"commandline collision", strings.Replace(minimal(""), "</domain>", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-m'/></qemu:commandline></domain>", 1), `qemu:commandline arg "-m": minivirt passes -m itself`},
		{"forward without a host side", strings.Replace(minimal(""), "<os>", "<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1'><forward port='22'/></vmchannels></metadata><os>", 1), `forward to guest port 22: give listen=`},
		{"forward listen", strings.Replace(minimal(""), "<os>", "<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1'><forward port='22' listen='localhost:x'/></vmchannels></metadata><os>", 1), `forward listen "localhost:x"`},
		{"forward twice", strings.Replace(minimal(""), "<os>", "<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1'><forward port='22' listen='2222'/><forward port='23' listen='127.0.0.1:2222'/></vmchannels></metadata><os>", 1), `forward tcp:127.0.0.1:2222: used twice`},
		{"mtu too small", strings.Replace(minimal(""), "<os>", "<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1' mtu='100'/></metadata><os>", 1), `vmchannels mtu 100: must be 576-65520`},
		{"mtu on slirp", strings.Replace(minimal(`<interface type='user'/>`), "<os>", "<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1' mtu='1500'/></metadata><os>", 1), `only minivirt's own network (netstack) takes an MTU`},
		{"portForward udp", minimal(`<interface type='user'><portForward proto='udp'><range start='53'/></portForward></interface>`), `interface portForward proto "udp": must be tcp`},
		{"vcpu current", strings.Replace(minimal(""), "<os>", "<vcpu current='3'>2</vcpu><os>", 1), `vcpu current 3: more than the 2`},
		{"bad mac", minimal(`<interface type='user'><mac address='zz'/></interface>`), `mac address "zz"`},
		{"bad arch", strings.Replace(minimal(""), "<os>", "<os><type arch='aarch64'>hvm</type>", 1), `arch "aarch64"`},
		{"bad network", minimal(`<vmchannels network='tap'/>`), `vmchannels network "tap"`},
		{"netstack with NAT", minimal(`<interface type='user'/><vmchannels network='netstack'/>`), "has no NAT"},
		{"machine injection", strings.Replace(minimal(""), "<os>", "<os><type machine='q35,accel=kvm'>hvm</type>", 1), `machine "q35,accel=kvm"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse(strings.NewReader(tt.xml))
			if err == nil {
				err = d.Validate()
			}
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q; want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q spans lines", err)
			}
		})
	}
}

func TestMemoryUnits(t *testing.T) {
	tests := []struct {
		unit  string
		value uint
		kib   uint
	}{
		{"", 1024, 1024},
		{"KiB", 1024, 1024},
		{"k", 7, 7},
		{"MiB", 256, 256 * 1024},
		{"M", 1, 1024},
		{"GiB", 2, 2 << 20},
		{"MB", 1, 977}, // 1,000,000 bytes rounds up to 977 KiB
		{"b", 1, 1},    // rounds up
		{"bytes", 2048, 2},
		{"KB", 1024, 1000},
	}
	for _, tt := range tests {
		kib, err := toKiB("memory", tt.value, tt.unit)
		if err != nil {
			t.Fatalf("%d %s: %v", tt.value, tt.unit, err)
		}
		if kib != tt.kib {
			t.Errorf("%d %s = %d KiB; want %d KiB", tt.value, tt.unit, kib, tt.kib)
		}
	}
}

func TestNormalise(t *testing.T) {
	d := mustParse(t, minimal(`<interface type='vmchannel'><source port='600'/><target path='/s'/></interface>
<channel type='unix'><source path='/v'/><target type='virtio' name='org.x.0'/></channel>`))
	if !d.UUIDGenerated() || len(d.UUID) != 36 {
		t.Errorf("uuid %q generated=%v; want a generated canonical uuid", d.UUID, d.UUIDGenerated())
	}
	if d.VCPU.Value != 1 || d.OnPoweroff != "destroy" || d.OnReboot != "restart" || d.OnCrash != "destroy" {
		t.Errorf("defaults not applied: vcpu %d, %s/%s/%s", d.VCPU.Value, d.OnPoweroff, d.OnReboot, d.OnCrash)
	}
	vcs := d.VMChannels()
	want := VMChannel{Address: DefaultVMChannelAddress, Port: 600, Path: "/s", MaxConnections: DefaultMaxConnections}
	if len(vcs) != 1 || vcs[0] != want {
		t.Errorf("VMChannels = %+v; want [%+v]", vcs, want)
	}
	if p := d.VirtioPorts(); len(p) != 1 || p[0] != (VirtioPort{Name: "org.x.0", Path: "/v"}) || d.Devices.Channels[0].Source.UNIX.Mode != "bind" {
		t.Errorf("VirtioPorts = %+v, mode %q", p, d.Devices.Channels[0].Source.UNIX.Mode)
	}
	nic, ok := d.UserNIC()
	if !ok || !nic.Isolated || nic.Model != "virtio" {
		t.Errorf("UserNIC = %+v, %v; want the implicit isolated virtio NIC", nic, ok)
	}
	out, _ := d.XML()
	if bytes.Contains(out, []byte("type=\"user\"")) {
		t.Errorf("the implicit NIC was written into the definition:\n%s", out)
	}

	u := mustParse(t, strings.Replace(minimal(`<interface type='user'/>`), "<os>", "<uuid>6C3B1F0E8A4D4F6B9C2E1D7A5B3E9F40</uuid><os>", 1))
	if u.UUID != "6c3b1f0e-8a4d-4f6b-9c2e-1d7a5b3e9f40" || u.UUIDGenerated() {
		t.Errorf("given uuid normalised to %q (generated=%v)", u.UUID, u.UUIDGenerated())
	}
	if nic, ok := u.UserNIC(); !ok || nic.Isolated {
		t.Errorf("explicit user NIC = %+v, %v; want not isolated", nic, ok)
	}
	if _, ok := mustParse(t, minimal("")).UserNIC(); ok {
		t.Error("a domain without interfaces or vmchannels got a NIC")
	}
}

func examples(t testing.TB) []string {
	files, err := filepath.Glob("../../examples/*.xml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	return files
}

// TestRoundTrip: parse, write, parse, write gives identical bytes, for every
// example and for both forms.
func TestRoundTrip(t *testing.T) {
	for _, f := range examples(t) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		first := mustParse(t, string(data))
		a, err := first.XML()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := mustParse(t, string(a)).XML()
		if !bytes.Equal(a, b) {
			t.Errorf("%s: round trip differs:\n%s\n---\n%s", f, a, b)
		}
	}
}

// testNetwork is where exported domains reach minivirt's network.
var testNetwork = LibvirtNetwork{Socket: "/run/minivirt-net/t.sock", MTU: 65520}

// One-line elements as virt-install writes them once corrupted the stored
// definition: a text rewrite after marshalling turned `<timer .../></clock>`
// into `<timer ...//>`. Every form must read back as written.
func TestCompactElementsReadBack(t *testing.T) {
	for _, extra := range []string{
		`<clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock>`,
		`<vcpu>2</vcpu><cpu mode='host-model'><topology sockets='1' cores='2' threads='1'/></cpu>`,
		`<pm><suspend-to-mem enabled='no'/><suspend-to-disk enabled='no'/></pm>`,
		`<features><acpi/><apic/></features>`,
	} {
		in := `<domain type='kvm'><name>c1</name><memory unit='MiB'>64</memory><os><kernel>/k</kernel></os>` + extra + `<devices/></domain>`
		d := mustParse(t, in)
		out, err := d.XML()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("%s: written form does not read back: %v\n%s", extra, err, out)
		}
		again, _ := back.XML()
		if !bytes.Equal(out, again) {
			t.Errorf("%s: round trip differs:\n%s\n---\n%s", extra, out, again)
		}
	}
}

// TestKeepsWhatItDoesNotActOn: a definition as libvirt writes it keeps
// every element, and define says which ones the guest will not get.
func TestKeepsWhatItDoesNotActOn(t *testing.T) {
	data, err := os.ReadFile("../../examples/libvirt-style.xml")
	if err != nil {
		t.Fatal(err)
	}
	d := mustParse(t, string(data))
	out, _ := d.XML()
	back := mustParse(t, string(out))
	if c := back.Clock; c == nil || len(c.Timer) != 1 || c.Timer[0].Name != "rtc" || c.Timer[0].TickPolicy != "catchup" {
		t.Errorf("clock timer lost: %+v", back.Clock)
	}
	if len(back.Devices.Graphics) != 1 || back.Devices.Graphics[0].VNC == nil || len(back.Devices.Videos) != 1 {
		t.Errorf("graphics or video lost:\n%s", out)
	}
	if back.VCPU.Placement != "static" || back.Features == nil || back.Features.ACPI == nil || back.CPU == nil || back.CPU.Check != "partial" {
		t.Errorf("vcpu placement, features or cpu lost:\n%s", out)
	}
	w := d.Warnings()
	if len(w) != 1 || !strings.Contains(w[0], "not served: <graphics>") || strings.Contains(w[0], "video") {
		t.Errorf("Warnings = %q; want one line naming <graphics> as not served (video is given to the guest)", w)
	}
}

// TestLibvirtExport: an exported domain carries its vmchannels through a
// virtio NIC on minivirt's network (libvirt 9.0 does not carry guestfwd
// channels to the guest), and keeps them in minivirt's metadata.
func TestLibvirtExport(t *testing.T) {
	data, _ := os.ReadFile("../../examples/channels.xml")
	d := mustParse(t, string(data))
	out, err := d.LibvirtXML(testNetwork)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(back.guestfwdChannels()) != 0 || back.QEMUCommandline != nil {
		t.Errorf("the export has a guestfwd channel, which libvirt would not carry, or QEMU options of its own:\n%s", out)
	}
	if n := back.Devices.Interfaces; len(n) != 1 || n[0].Source == nil || n[0].Source.VHostUser == nil ||
		n[0].Source.VHostUser.Chardev.UNIX == nil || n[0].Source.VHostUser.Chardev.UNIX.Path != "/run/minivirt-net/t.sock" ||
		n[0].Source.VHostUser.Chardev.UNIX.Mode != "client" || n[0].Alias == nil || back.QEMUOverride == nil ||
		!strings.Contains(fmt.Sprint(back.QEMUOverride.Devices), "{"+n[0].Alias.Name+" {[{host_mtu unsigned 65520}") {
		t.Errorf("the export lacks minivirt's network as libvirt's vhost-user interface (QEMU the client of the socket):\n%s", out)
	}
	if mb := back.MemoryBacking; mb == nil || mb.MemorySource == nil || mb.MemorySource.Type != "memfd" || mb.MemoryAccess == nil || mb.MemoryAccess.Mode != "shared" {
		t.Errorf("a vhost-user device needs the guest's memory shared by memfd; the export says:\n%s", out)
	}
	// The stream backend goes through <qemu:commandline>, as libvirt has
	// no interface for QEMU's -netdev stream.
	stream := mustParse(t, strings.Replace(string(data), "<devices>", "<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1' backend='stream'/></metadata><devices>", 1))
	sout, err := stream.LibvirtXML(testNetwork)
	if err != nil {
		t.Fatal(err)
	}
	sback, err := Parse(bytes.NewReader(sout))
	if err != nil {
		t.Fatal(err)
	}
	if sback.QEMUCommandline == nil || len(sback.Devices.Interfaces) != 0 {
		t.Fatalf("stream export without <qemu:commandline>, or with an interface:\n%s", sout)
	}
	args := fmt.Sprint(sback.QEMUCommandline.Args)
	if !strings.Contains(args, "stream,id=minivirt-net0,server=off,addr.type=unix,addr.path=/run/minivirt-net/t.sock") ||
		!strings.Contains(args, "virtio-net-pci,netdev=minivirt-net0,host_mtu=65520,addr=0x10") {
		t.Errorf("the export lacks minivirt's network NIC: %s", args)
	}
	if err := sback.Validate(); err == nil || !strings.Contains(err.Error(), "minivirt's export for libvirt") {
		t.Errorf("defining the stream export in minivirt again: %v; want a refusal naming it", err)
	}
	got, want := back.VMChannels(), d.VMChannels()
	if len(got) != len(want) {
		t.Fatalf("vmchannels %+v; want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("vmchannel %d = %+v; want %+v", i, got[i], want[i])
		}
	}
	if err := back.Validate(); err == nil || !strings.Contains(err.Error(), "minivirt's export for libvirt") {
		t.Errorf("defining the export in minivirt again: %v; want a refusal naming it", err)
	}
	// Vmchannels beside NAT cannot be moved: said, never silently broken.
	nat := mustParse(t, minimal(`<interface type='user'/><interface type='vmchannel'><source port='600'/><target path='/s'/></interface>`))
	if _, err := nat.LibvirtXML(testNetwork); !errors.Is(err, ErrNotMovable) {
		t.Errorf("vmchannels with NAT: err = %v; want ErrNotMovable", err)
	}
}

// TestLibvirtSchema runs libvirt's own validator on the export of every
// example and of generated domains. `make deps` installs it.
func TestLibvirtSchema(t *testing.T) {
	validator, err := exec.LookPath("virt-xml-validate")
	if err != nil {
		t.Fatal("virt-xml-validate not found: run `make deps` (Debian packages libvirt-clients and libxml2-utils)")
	}
	var docs [][]byte
	for _, f := range examples(t) {
		data, _ := os.ReadFile(f)
		docs = append(docs, []byte(string(data)))
	}
	for i := 0; i < 8; i++ {
		docs = append(docs, []byte(generated(i)))
	}
	dir := t.TempDir()
	for i, doc := range docs {
		d := mustParse(t, string(doc))
		out, err := d.LibvirtXML(testNetwork)
		if errors.Is(err, ErrNotMovable) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, d.Name+".xml")
		if err := os.WriteFile(path, out, 0o644); err != nil {
			t.Fatal(err)
		}
		if msg, err := exec.Command(validator, path, "domain").CombinedOutput(); err != nil {
			t.Errorf("document %d (%s) fails libvirt's schema: %v\n%s\n%s", i, d.Name, err, msg, out)
		}
	}
}

// generated builds the i-th of a family of domains that together use every
// device form minivirt knows.
func generated(i int) string {
	var dev strings.Builder
	for p := 0; p <= i; p++ {
		addr := netip.AddrFrom4([4]byte{10, 0, 2, byte(4 + p%8)})
		dev.WriteString(`<interface type='vmchannel'><source address='` + addr.String() + `' port='` + itoa(600+p) + `'/><target path='/run/g/` + itoa(p) + `.sock' proxy='v2'/></interface>`)
	}
	if i%2 == 1 {
		dev.WriteString(`<interface type='user'><mac address='52:54:00:00:00:0` + itoa(i) + `'/><model type='e1000'/></interface>`)
	}
	if i%3 == 0 {
		dev.WriteString(`<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/img/` + itoa(i) + `.raw'/><target dev='vda' bus='virtio'/></disk>`)
		dev.WriteString(`<channel type='unix'><source mode='bind' path='/run/g/agent` + itoa(i) + `.sock'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`)
	}
	dev.WriteString(`<serial type='pty'/><console type='pty'/>`)
	return `<domain type='kvm'><name>gen` + itoa(i) + `</name><memory unit='GiB'>1</memory><vcpu>` + itoa(1+i%4) + `</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>/boot/vmlinuz</kernel><initrd>/boot/initrd</initrd><cmdline>console=ttyS0</cmdline></os>
<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>restart</on_crash><devices>` + dev.String() + `</devices></domain>`
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestAddRemoveVMChannel(t *testing.T) {
	d := mustParse(t, minimal(`<channel type='unix'><source mode='connect' path='/c'/><target type='guestfwd' address='10.0.2.5' port='700'/></channel>`))
	added, err := d.AddVMChannel(VMChannel{Port: 700, Path: "/a"})
	if err != nil {
		t.Fatalf("add on another address: %v", err)
	}
	// The channel added, defaults applied; not the last one listed (the
	// guestfwd channel is listed after it).
	if added.Address != DefaultVMChannelAddress || added.Port != 700 || added.Path != "/a" || added.MaxConnections == 0 {
		t.Fatalf("AddVMChannel returned %+v; want 10.0.2.4:700 /a with the default limit", added)
	}
	if _, err := d.AddVMChannel(VMChannel{Port: 700, Path: "/b"}); err == nil || !strings.Contains(err.Error(), "used twice") {
		t.Fatalf("duplicate add: %v", err)
	}
	if n := len(d.VMChannels()); n != 2 {
		t.Fatalf("a refused add changed the domain: %d channels", n)
	}
	if _, err := d.RemoveVMChannel(700, netip.Addr{}); err == nil || !strings.Contains(err.Error(), "--address") {
		t.Fatalf("ambiguous remove: %v", err)
	}
	if gone, err := d.RemoveVMChannel(700, netip.MustParseAddr("10.0.2.5")); err != nil || gone.Path != "/c" {
		t.Fatalf("RemoveVMChannel = %+v, %v; want the guestfwd channel to /c", gone, err)
	}
	if vcs := d.VMChannels(); len(vcs) != 1 || vcs[0].Path != "/a" {
		t.Fatalf("after remove: %+v", vcs)
	}
	if _, err := d.RemoveVMChannel(9, netip.Addr{}); err == nil {
		t.Fatal("removing an absent port succeeded")
	}
}

func TestNetworkChoice(t *testing.T) {
	vc := `<interface type='vmchannel'><source port='600'/><target path='/s'/></interface>`
	tests := []struct {
		devices, want string
	}{
		{vc, NetworkNetstack},                           // vmchannels only: minivirt's own network
		{vc + `<interface type='user'/>`, NetworkSlirp}, // NAT wanted: QEMU's
		{vc + `<vmchannels network='netstack'/>`, NetworkNetstack},
		{vc + `<vmchannels network='slirp'/>`, NetworkSlirp},
	}
	for _, tt := range tests {
		d := mustParse(t, minimal(tt.devices))
		if got := d.Network(); got != tt.want {
			t.Errorf("%s: Network() = %q; want %q", tt.devices, got, tt.want)
		}
		out, _ := d.XML()
		if back := mustParse(t, string(out)); back.Network() != tt.want {
			t.Errorf("%s: the choice did not round-trip:\n%s", tt.devices, out)
		}
		if _, err := d.LibvirtXML(testNetwork); err != nil && !errors.Is(err, ErrNotMovable) {
			t.Errorf("%s: libvirt form: %v", tt.devices, err)
		}
	}
}

// An XML encoding declaration is honoured: ISO-8859-1 bytes become UTF-8.
func TestEncodingDeclaration(t *testing.T) {
	doc := "<?xml version='1.0' encoding='ISO-8859-1'?>\n<domain type='qemu'><name>enc</name><description>caf\xe9</description><memory>65536</memory><os><kernel>/k</kernel></os></domain>"
	d := mustParse(t, doc)
	if d.Description != "café" {
		t.Errorf("description = %q; want café", d.Description)
	}
}

// Ports are numbers: port='0600' is port 600 everywhere, so remove and add
// by 600 work on it.
func TestPortsAreNumbers(t *testing.T) {
	d := mustParse(t, minimal(`<interface type='vmchannel'><source port='0600'/><target path='/s'/></interface>
<channel type='unix'><source mode='connect' path='/g'/><target type='guestfwd' address='10.0.2.5' port='0700'/></channel>`))
	vcs := d.VMChannels()
	if len(vcs) != 2 || vcs[0].Port != 600 || vcs[1].Port != 700 {
		t.Fatalf("VMChannels = %+v; want ports 600 and 700", vcs)
	}
	if _, err := d.AddVMChannel(VMChannel{Port: 600, Path: "/t"}); err == nil || !strings.Contains(err.Error(), "used twice") {
		t.Errorf("adding port 600 beside port 0600: %v", err)
	}
	if _, err := d.RemoveVMChannel(600, netip.Addr{}); err != nil {
		t.Errorf("removing port 600 (written 0600): %v", err)
	}
	if _, err := d.RemoveVMChannel(700, netip.Addr{}); err != nil {
		t.Errorf("removing port 700 (written 0700): %v", err)
	}
	if len(d.VMChannels()) != 0 {
		t.Errorf("left: %+v", d.VMChannels())
	}
}

// Minivirt's vmchannels travel in <metadata> under its namespace, beside
// other applications' metadata, which stays exactly as written.
func TestMetadataCarriage(t *testing.T) {
	other := `<libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0"><libosinfo:os id="http://debian.org/debian/12"/></libosinfo:libosinfo>`
	d := mustParse(t, strings.Replace(minimal(`<interface type='vmchannel'><source port='600'/><target path='/s' proxy='v2' maxconnections='8'/></interface><vmchannels network='slirp'/>`),
		"<os>", "<metadata>"+other+"</metadata><os>", 1))
	out, err := d.XML()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte(other)) {
		t.Errorf("other metadata changed:\n%s", out)
	}
	if bytes.Contains(out, []byte(`type="vmchannel"`)) || !bytes.Contains(out, []byte(`<vmchannels xmlns="`+Namespace+`" network="slirp">`)) {
		t.Errorf("vmchannels not carried in metadata:\n%s", out)
	}
	back := mustParse(t, string(out))
	want := VMChannel{Address: DefaultVMChannelAddress, Port: 600, Path: "/s", Proxy: "v2", MaxConnections: 8}
	if vcs := back.VMChannels(); len(vcs) != 1 || vcs[0] != want || back.Network() != NetworkSlirp {
		t.Errorf("read back: %+v on %s; want [%+v] on slirp", vcs, back.Network(), want)
	}
	// libvirt's own validator accepts the stored form as it is.
	if validator, err := exec.LookPath("virt-xml-validate"); err == nil {
		path := filepath.Join(t.TempDir(), "d.xml")
		os.WriteFile(path, out, 0o644)
		if msg, err := exec.Command(validator, path, "domain").CombinedOutput(); err != nil {
			t.Errorf("minivirt's stored form fails libvirt's schema: %v\n%s\n%s", err, msg, out)
		}
	}
}

// Forwards: both forms, typed, round-tripped, added and removed.
func TestForwards(t *testing.T) {
	d := mustParse(t, minimal(`<interface type='user'><portForward proto='tcp'><range start='2222' end='2223' to='22'/></portForward></interface>`))
	fs := d.Forwards()
	if len(fs) != 2 || fs[0].GuestPort != 22 || fs[0].Listen.String() != "127.0.0.1:2222" || fs[1].GuestPort != 23 || fs[1].Listen.Port() != 2223 {
		t.Errorf("portForward range: %+v", fs)
	}
	n := mustParse(t, minimal(`<interface type='vmchannel'><source port='600'/><target path='/s'/></interface>`))
	if _, err := n.AddForward(Forward{GuestPort: 80, Path: "/run/web.sock"}); err != nil {
		t.Fatal(err)
	}
	out, _ := n.XML()
	back := mustParse(t, string(out))
	if f := back.Forwards(); len(f) != 1 || f[0].Path != "/run/web.sock" || f[0].GuestPort != 80 {
		t.Errorf("forward did not round-trip:\n%s", out)
	}
	if _, err := back.RemoveForward(80, ""); err != nil || len(back.Forwards()) != 0 {
		t.Errorf("remove: %v, %+v", err, back.Forwards())
	}
}

// TestRefusedAtStart: what libvirt defines and minivirt cannot run here is
// defined, kept as given, and refused by CheckStart with one line that
// names it.
func TestRefusedAtStart(t *testing.T) {
	tests := []struct{ name, xml, want string }{
		{"nothing to boot", strings.Replace(minimal(""), "<kernel>/k</kernel>", "", 1), `nothing to boot`},
		{"bridge", minimal(`<interface type='bridge'><source bridge='br0'/></interface>`), `interface type bridge: minivirt has no such network`},
		{"address on a bridge", minimal(`<disk type='file'><source file='/i'/><target dev='vda'/><address type='pci' domain='0x0000' bus='0x01' slot='0x05' function='0x0'/></disk>`), `disk vda address: minivirt places devices on the root PCI bus only`},
		{"drive address that disagrees", minimal(`<disk type='file'><source file='/i'/><target dev='sda' bus='sata'/><address type='drive' controller='0' bus='0' target='0' unit='3'/></disk>`), `minivirt puts sda at controller 0 bus 0 unit 0`},
		{"usb address", minimal(`<disk type='file'><source file='/i'/><target dev='vda'/><address type='usb' bus='0' port='1'/></disk>`), `disk vda address type usb: minivirt places`},
		{"hostdev", minimal(`<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0' slot='3' function='0'/></source></hostdev>`), `devices: <hostdev> not supported by minivirt`},
		{"xen channel", minimal(`<channel type='unix'><source path='/s'/><target type='xen' name='x'/></channel>`), `channel target type xen: minivirt has guestfwd and virtio channels`},
		{"two user nics", minimal(`<interface type='user'/><interface type='user'/>`), `one user-mode NIC`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse(strings.NewReader(tt.xml))
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Validate(); err != nil {
				t.Fatalf("refused at define: %v", err)
			}
			err = d.CheckStart()
			if err == nil {
				t.Fatalf("start accepted; want an error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("start error %q; want one line containing %q", err, tt.want)
			}
			if len(d.RefusedAtStart()) == 0 {
				t.Fatal("RefusedAtStart is empty")
			}
			a, err := d.XML()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse(bytes.NewReader(a))
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := back.XML(); !bytes.Equal(a, b) {
				t.Fatalf("not kept as given:\n%s\n---\n%s", a, b)
			}
		})
	}
}

// TestSetMedium: change-media's change to a definition: a medium goes into
// an empty cdrom and out again, the document round-trips each time, a disk
// has no medium to change, and a relative path or an unknown drive is
// refused with the domain unchanged.
func TestSetMedium(t *testing.T) {
	d := mustParse(t, minimal(`<disk type='file' device='cdrom'><target dev='sdb' bus='sata'/><readonly/></disk><disk type='file'><source file='/d'/><target dev='vda'/></disk>`))
	before, _ := d.XML()
	if err := d.SetMedium("sdb", "/srv/a.iso"); err != nil {
		t.Fatal(err)
	}
	a, _ := d.XML()
	if !bytes.Contains(a, []byte(`<source file="/srv/a.iso"></source>`)) {
		t.Fatalf("no medium in:\n%s", a)
	}
	if back := mustParse(t, string(a)); Empty(back.Devices.Disks[0]) {
		t.Fatal("the medium does not read back")
	}
	if err := d.SetMedium("sdb", ""); err != nil {
		t.Fatal(err)
	}
	if b, _ := d.XML(); !bytes.Equal(b, before) {
		t.Fatalf("eject does not give the empty drive back:\n%s\n---\n%s", b, before)
	}
	for _, tt := range []struct{ dev, path, want string }{
		{"vda", "/srv/a.iso", "disk vda: a disk has no removable medium"},
		{"sdc", "/srv/a.iso", "disk sdc: the domain has no such disk"},
		{"sdb", "a.iso", `must be an absolute path`},
	} {
		err := d.SetMedium(tt.dev, tt.path)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("SetMedium(%s, %s): %v; want %q", tt.dev, tt.path, err, tt.want)
		}
		if b, _ := d.XML(); !bytes.Equal(b, before) {
			t.Errorf("SetMedium(%s, %s) changed the domain", tt.dev, tt.path)
		}
	}
}

// TestCheckMediaChange: as virsh change-media, --insert refuses a drive
// that has a medium, --eject an empty one; --update takes either.
func TestCheckMediaChange(t *testing.T) {
	d := mustParse(t, minimal(`<disk type='file' device='cdrom'><target dev='sdb' bus='sata'/></disk><disk type='file' device='cdrom'><source file='/srv/x.iso'/><target dev='sdc' bus='sata'/></disk>`))
	for _, tt := range []struct {
		dev  string
		mode MediaMode
		want string
	}{
		{"sdb", MediaInsert, ""}, {"sdb", MediaUpdate, ""}, {"sdb", MediaEject, "disk sdb: has no medium to eject"},
		{"sdc", MediaInsert, "disk sdc: has a medium already (/srv/x.iso); use --update"}, {"sdc", MediaUpdate, ""}, {"sdc", MediaEject, ""},
	} {
		err := d.CheckMediaChange(tt.dev, tt.mode)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%s %s: %v; want %q", tt.dev, tt.mode, err, tt.want)
		}
	}
}
