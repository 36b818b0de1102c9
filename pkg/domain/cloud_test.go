package domain

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
)

func TestNewCloud(t *testing.T) {
	for _, user := range []bool{false, true} {
		fwd := Forward{GuestPort: 80, Path: "/run/web.sock"}
		if user { // QEMU's user network forwards TCP only
			fwd = Forward{GuestPort: 80, Listen: netip.MustParseAddrPort("127.0.0.1:8080")}
		}
		spec := CloudSpec{Name: "web", MemoryKiB: 1 << 20, VCPUs: 2, Disk: "/s/disks/web.qcow2", Seed: "/s/disks/web-seed.iso", UserNetwork: user,
			Forwards: []Forward{fwd}, VMChannels: []VMChannel{{Port: 600, Path: "/run/svc.sock"}}}
		d, err := NewCloud(spec)
		if err != nil {
			t.Fatalf("user network %v: %v", user, err)
		}
		if len(d.Devices.Disks) != 2 || d.Devices.Disks[0].Target.Bus != "virtio" || d.Devices.Disks[1].ReadOnly == nil || d.Devices.Disks[1].Target.Dev != "vdb" {
			t.Errorf("disks: %+v", d.Devices.Disks)
		}
		ports := d.VirtioPorts()
		if len(ports) != 1 || ports[0].Name != AgentChannel {
			t.Errorf("virtio ports: %+v", ports)
		}
		if want := map[bool]string{false: NetworkNetstack, true: NetworkSlirp}[user]; d.Network() != want {
			t.Errorf("user network %v: Network() = %q, want %q", user, d.Network(), want)
		}
		if d.OS.Kernel != "" {
			t.Errorf("a cloud domain boots its disk, not a kernel: %q", d.OS.Kernel)
		}
		// The stored form reads back as written.
		data, _ := d.XML()
		back, err := Parse(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if again, _ := back.XML(); !bytes.Equal(again, data) {
			t.Errorf("does not round-trip:\n%s\n%s", data, again)
		}
	}
	if _, err := NewCloud(CloudSpec{Name: "bad name", MemoryKiB: 1024, VCPUs: 1, Disk: "/d", Seed: "/s"}); err == nil || !strings.Contains(err.Error(), `name "bad name"`) {
		t.Errorf("a bad name: %v", err)
	}
}

func TestParseMemory(t *testing.T) {
	for in, want := range map[string]uint{"1GiB": 1 << 20, "512MiB": 512 << 10, "2G": 2 << 20, "1048576": 1 << 20, "1GB": 976563} {
		if got, err := ParseMemory(in); err != nil || got != want {
			t.Errorf("ParseMemory(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "0", "1 parsecs", "-1G"} {
		if _, err := ParseMemory(in); err == nil {
			t.Errorf("ParseMemory(%q) succeeded", in)
		}
	}
}
