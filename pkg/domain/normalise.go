package domain

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// normalise makes libvirt's defaults explicit, as libvirt does when it
// defines a domain, so that what is written reads back the same.
func (d *Domain) normalise() error {
	if d.UUID == "" {
		d.UUID = d.sysinfoUUID() // as libvirt: the SMBIOS system uuid names the domain
	}
	if d.UUID == "" {
		d.UUID, d.uuidGenerated = NewUUID(), true
	} else {
		u, err := canonicalUUID(d.UUID)
		if err != nil {
			return err
		}
		d.UUID = u
	}
	if d.Memory == nil {
		return errors.New("memory: missing; give <memory unit='MiB'>256</memory>")
	}
	kib, err := toKiB("memory", d.Memory.Value, d.Memory.Unit)
	if err != nil {
		return err
	}
	d.Memory.Value, d.Memory.Unit = kib, "KiB"
	if c := d.CurrentMemory; c != nil {
		if c.Value, err = toKiB("currentMemory", c.Value, c.Unit); err != nil {
			return err
		}
		c.Unit = "KiB"
	}
	if d.VCPU == nil {
		d.VCPU = &libvirtxml.DomainVCPU{Value: 1}
	}
	if d.VCPU.Current == d.VCPU.Value {
		d.VCPU.Current = 0 // libvirt writes current only when it differs
	}
	if d.OS == nil {
		d.OS = &libvirtxml.DomainOS{}
	}
	if d.OS.Type == nil {
		d.OS.Type = &libvirtxml.DomainOSType{}
	}
	setDefault(&d.OS.Type.Type, "hvm")
	setDefault(&d.OS.Type.Arch, "x86_64")
	d.OS.Kernel = strings.TrimSpace(d.OS.Kernel)
	if n := d.OS.NVRam; n != nil {
		n.NVRam = strings.TrimSpace(n.NVRam) // the space around a <source> child
	}
	d.OS.Initrd = strings.TrimSpace(d.OS.Initrd)
	setDefault(&d.OnPoweroff, "destroy")
	setDefault(&d.OnReboot, "restart")
	setDefault(&d.OnCrash, "destroy")
	if d.Devices == nil {
		d.Devices = &libvirtxml.DomainDeviceList{}
	}
	d.Devices.Emulator = strings.TrimSpace(d.Devices.Emulator)
	for i := range d.Devices.Interfaces {
		nic := &d.Devices.Interfaces[i]
		if isUserNIC(*nic) && nic.Model == nil {
			nic.Model = &libvirtxml.DomainInterfaceModel{Type: "virtio"}
		}
	}
	for i := range d.Devices.Channels {
		ch := &d.Devices.Channels[i]
		if ch.Target == nil || ch.Source == nil || ch.Source.UNIX == nil {
			continue
		}
		switch {
		case ch.Target.GuestFWD != nil:
			setDefault(&ch.Source.UNIX.Mode, "connect")
			if p, err := strconv.ParseUint(ch.Target.GuestFWD.Port, 10, 32); err == nil {
				ch.Target.GuestFWD.Port = strconv.FormatUint(p, 10) // 0600 is 600
			}
		case ch.Target.VirtIO != nil:
			setDefault(&ch.Source.UNIX.Mode, "bind")
		}
	}
	d.normaliseVMChannels()
	if err := d.normaliseMemory(); err != nil {
		return err
	}
	if c := d.CurrentMemory; c != nil && (c.Value > d.Memory.Value || c.Value == 0) {
		c.Value = d.Memory.Value // as libvirt: the balloon's target is at most the memory, 0 is all of it
	}
	for i := range d.Devices.Videos {
		if v := &d.Devices.Videos[i]; v.Model.Type == "" {
			v.Model.Type = "vga" // libvirt's default for an x86 guest
		}
	}
	return nil
}

// normaliseVMChannels gives minivirt's vmchannels the default address:
// the one place it is applied, on reading a domain and on adding one.
func (d *Domain) normaliseVMChannels() {
	for i := range d.Ext.VMChannels {
		if d.Ext.VMChannels[i].Path != "" {
			setDefault(&d.Ext.VMChannels[i].Address, DefaultVMChannelAddress.String())
		}
	}
}

func setDefault(s *string, def string) {
	*s = strings.TrimSpace(*s)
	if *s == "" {
		*s = def
	}
}

// NewUUID returns a random (version 4) UUID in its canonical form.
func NewUUID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails on Linux
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b)
}

func formatUUID(b [16]byte) string {
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// CanonicalUUID accepts the forms libvirt accepts (with or without dashes,
// either case) and returns the lower-case dashed form.
func CanonicalUUID(s string) (string, error) { return canonicalUUID(s) }

func canonicalUUID(s string) (string, error) {
	h := strings.ReplaceAll(strings.TrimSpace(s), "-", "")
	var b [16]byte
	if len(h) != 32 {
		return "", fmt.Errorf("uuid %q: must be 32 hex digits, as in 0b6c8e5a-3f1d-4c2e-9a7b-5d4e3f2a1b0c", s)
	}
	if _, err := hex.Decode(b[:], []byte(h)); err != nil {
		return "", fmt.Errorf("uuid %q: must be 32 hex digits, as in 0b6c8e5a-3f1d-4c2e-9a7b-5d4e3f2a1b0c", s)
	}
	return formatUUID(b), nil
}

// memoryUnits are libvirt's scaled-integer units, in bytes.
var memoryUnits = map[string]uint64{
	"b": 1, "bytes": 1,
	"KB": 1e3, "k": 1 << 10, "K": 1 << 10, "KiB": 1 << 10,
	"MB": 1e6, "M": 1 << 20, "MiB": 1 << 20,
	"GB": 1e9, "G": 1 << 30, "GiB": 1 << 30,
	"TB": 1e12, "T": 1 << 40, "TiB": 1 << 40,
	"PB": 1e15, "P": 1 << 50, "PiB": 1 << 50,
	"EB": 1e18, "E": 1 << 60, "EiB": 1 << 60,
}

// toKiB converts a libvirt scaled integer to KiB, rounding up as libvirt does.
func toKiB(elem string, value uint, unit string) (uint, error) {
	unit = strings.TrimSpace(unit)
	if unit == "" {
		unit = "KiB"
	}
	scale, ok := memoryUnits[unit]
	if !ok {
		return 0, fmt.Errorf("%s unit %q: unknown; use KiB, MiB or GiB (or b, KB, MB, GB, TiB, ...)", elem, unit)
	}
	n := uint64(value)
	if n > math.MaxUint64/scale {
		return 0, fmt.Errorf("%s %d %s: too large", elem, value, unit)
	}
	bytes := n * scale
	kib := bytes / 1024
	if bytes%1024 != 0 {
		kib++
	}
	return uint(kib), nil
}

// MemoryMiB is the guest's memory in MiB, rounded up, as QEMU's -m takes it.
func (d *Domain) MemoryMiB() uint64 { return (uint64(d.Memory.Value) + 1023) / 1024 }
