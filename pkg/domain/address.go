package domain

import (
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// Addresses minivirt honours: a PCI slot and function on the root bus, a
// drive unit on the IDE/AHCI controller that agrees with the target name,
// and a virtio-serial port. Others are refused by name.

// checkPCIAddress accepts a or a PCI address on the root bus.
func checkPCIAddress(where string, a *libvirtxml.DomainAddress) error {
	if a == nil {
		return nil
	}
	if a.PCI == nil {
		return fmt.Errorf("%s address type %s: not supported by minivirt; use type='pci' or remove the address", where, addressType(a))
	}
	p := a.PCI
	if p.ZPCI != nil || zero(p.Domain) != 0 || zero(p.Bus) != 0 {
		return fmt.Errorf("%s address: minivirt places devices on the root PCI bus only (domain 0, bus 0); remove the address or use bus='0x00'", where)
	}
	if s := zero(p.Slot); s < 1 || s > 31 {
		return fmt.Errorf("%s address slot %#02x: must be 0x01-0x1f", where, s)
	}
	if zero(p.Function) > 7 {
		return fmt.Errorf("%s address function %d: must be 0-7", where, zero(p.Function))
	}
	return nil
}

// PCIAddr is the QEMU device option that places a device at its PCI
// address, or "".
func PCIAddr(a *libvirtxml.DomainAddress) string {
	if a == nil || a.PCI == nil {
		return ""
	}
	s := fmt.Sprintf(",addr=%#02x.%x", zero(a.PCI.Slot), zero(a.PCI.Function))
	if a.PCI.MultiFunction == "on" {
		s += ",multifunction=on"
	}
	return s
}

// DriveUnit is where minivirt puts a disk on the machine's IDE or AHCI
// controller: the bus and unit its target name says (hda: 0/0, hdb: 0/1,
// hdc: 1/0; sda: port 0, sdb: port 1), as libvirt assigns them.
func DriveUnit(dev string, ide bool) (bus, unit uint) {
	n := uint(dev[len(dev)-1] - 'a')
	if ide {
		return n / 2, n % 2
	}
	return 0, n
}

// checkDriveAddress accepts a drive address that agrees with where
// minivirt puts the disk.
func (d *Domain) checkDriveAddress(where string, disk libvirtxml.DomainDisk, bus string) error {
	a := disk.Address
	if a == nil {
		return nil
	}
	if bus == "virtio" {
		return checkPCIAddress(where, a)
	}
	if a.Drive == nil {
		return fmt.Errorf("%s address type %s: not supported on bus %s; use type='drive' or remove the address", where, addressType(a), bus)
	}
	ide := bus == "ide" && !d.q35()
	wb, wu := DriveUnit(disk.Target.Dev, ide)
	dr := a.Drive
	if zero(dr.Controller) != 0 || zero(dr.Target) != 0 || zero(dr.Bus) != wb || zero(dr.Unit) != wu {
		return fmt.Errorf("%s address: minivirt puts %s at controller 0 bus %d unit %d; remove the address or change the target dev", where, disk.Target.Dev, wb, wu)
	}
	return nil
}

// q35 tells the machine family: q35 unless the machine is a pc (i440fx).
func (d *Domain) q35() bool {
	m := d.OS.Type.Machine
	return m == "" || strings.Contains(m, "q35")
}

func zero(p *uint) uint {
	if p == nil {
		return 0
	}
	return *p
}

func addressType(a *libvirtxml.DomainAddress) string {
	if s := unhandled(a); len(s) > 0 {
		return strings.TrimPrefix(s[0], "type ")
	}
	return "none"
}
