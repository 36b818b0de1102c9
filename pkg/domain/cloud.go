package domain

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"libvirt.org/go/libvirtxml"
)

// The domain a cloud image runs in (minivirt create): built from a spec in
// libvirt's model, then read back through Parse and Validate as any
// definition is, so it is plain libvirt XML with minivirt's metadata.

// AgentChannel is the name of QEMU's guest agent's virtio-serial port.
const AgentChannel = "org.qemu.guest_agent.0"

// CloudSpec is what a domain made from a cloud image consists of. Paths are
// absolute; files are made by the caller.
type CloudSpec struct {
	Name      string
	MemoryKiB uint
	VCPUs     uint
	// Disk is the qcow2 overlay backed by the image; Seed the NoCloud ISO.
	// Both go on virtio: cloud kernels have no AHCI driver.
	Disk, Seed string
	// UserNetwork gives QEMU's user network with NAT to the outside;
	// otherwise the guest is on minivirt's own, isolated network.
	UserNetwork bool
	// UEFI boots OVMF instead of SeaBIOS.
	UEFI       bool
	VMChannels []VMChannel
	Forwards   []Forward
}

// ParseMemory reads a size as the command line gives it, libvirt's
// scaled-integer units: "1GiB", "512MiB", "2G", "1048576" (KiB).
func ParseMemory(s string) (kib uint, err error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsDigit(r) })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], s[i:]
	}
	n, err := strconv.ParseUint(num, 10, 0)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("memory %q: give a size such as 1GiB or 512MiB", s)
	}
	return toKiB("memory", uint(n), unit)
}

// NewCloud builds the domain of spec: the overlay and the seed (read-only)
// on virtio, the guest agent's channel, a serial console, and the network
// spec asks for. The result is normalised and validated.
func NewCloud(spec CloudSpec) (*Domain, error) {
	if err := ValidName(spec.Name); err != nil {
		return nil, err
	}
	virtio := func(dev, file, format string, readonly bool) libvirtxml.DomainDisk {
		d := libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: format},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: file}},
			Target: &libvirtxml.DomainDiskTarget{Dev: dev, Bus: "virtio"},
		}
		if readonly {
			d.ReadOnly = &libvirtxml.DomainDiskReadOnly{}
		}
		return d
	}
	lx := libvirtxml.Domain{
		Type:   "kvm",
		Name:   spec.Name,
		Memory: &libvirtxml.DomainMemory{Value: spec.MemoryKiB, Unit: "KiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: spec.VCPUs},
		OS: &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: "q35", Type: "hvm"},
			BootDevices: []libvirtxml.DomainBootDevice{{Dev: "hd"}}},
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}, APIC: &libvirtxml.DomainFeatureAPIC{}},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{virtio("vda", spec.Disk, "qcow2", false), virtio("vdb", spec.Seed, "raw", true)},
			Channels: []libvirtxml.DomainChannel{{
				Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
				Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: AgentChannel}},
			}},
			Serials:    []libvirtxml.DomainSerial{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}}}},
			Consoles:   []libvirtxml.DomainConsole{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}}}},
			MemBalloon: &libvirtxml.DomainMemBalloon{Model: "virtio"},
			RNGs:       []libvirtxml.DomainRNG{{Model: "virtio", Backend: &libvirtxml.DomainRNGBackend{Random: &libvirtxml.DomainRNGBackendRandom{Device: "/dev/urandom"}}}},
		},
	}
	if spec.UEFI {
		lx.OS.Firmware = "efi"
	}
	d := &Domain{Domain: lx}
	if spec.UserNetwork {
		d.Devices.Interfaces = []libvirtxml.DomainInterface{{
			Source: &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}},
			Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"},
		}}
	} else {
		d.Ext.Network = NetworkNetstack
	}
	// Read back as any definition is: defaults made explicit (the uuid
	// among them), then the channels and forwards, each checked as added.
	data, err := d.XML()
	if err != nil {
		return nil, err
	}
	back, err := Parse(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	for _, vc := range spec.VMChannels {
		if _, err := back.AddVMChannel(vc); err != nil {
			return nil, err
		}
	}
	for _, f := range spec.Forwards {
		if _, err := back.AddForward(f); err != nil {
			return nil, err
		}
	}
	if err := back.Validate(); err != nil {
		return nil, err
	}
	return back, nil
}
