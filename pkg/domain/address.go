package domain

import (
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// Addresses minivirt honours: a PCI slot and function on the root bus, a
// drive unit on the IDE/AHCI controller that agrees with the target name,
// and a virtio-serial port. Others are refused by name.

// checkPCIAddress accepts no address or a PCI address on the root bus. An
// address elsewhere (another bus, another type) is valid, but minivirt
// cannot place the device there: start refuses it.
func (ck *checker) checkPCIAddress(where string, a *libvirtxml.DomainAddress) error {
	if a == nil {
		return nil
	}
	if a.PCI == nil {
		ck.refuseAtStart("%s address type %s: minivirt places this device by PCI address only; use type='pci' or remove the address to start the domain", where, addressType(a))
		return nil
	}
	p := a.PCI
	if p.ZPCI != nil || zero(p.Domain) != 0 || zero(p.Bus) != 0 {
		ck.refuseAtStart("%s address: minivirt places devices on the root PCI bus only (domain 0, bus 0); remove the address or use bus='0x00' to start the domain", where)
		return nil
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
// minivirt puts the disk; start refuses another.
func (ck *checker) checkDriveAddress(where string, disk libvirtxml.DomainDisk, bus string) error {
	d := ck.d
	a := disk.Address
	if a == nil {
		return nil
	}
	if bus == "virtio" {
		return ck.checkPCIAddress(where, a)
	}
	if a.Drive == nil {
		ck.refuseAtStart("%s address type %s: minivirt places a disk on bus %s by drive address; use type='drive' or remove the address to start the domain", where, addressType(a), bus)
		return nil
	}
	if bus == "scsi" { // a controller it names and the domain lacks is added, as libvirt does
		return nil
	}
	if bus == "usb" || bus == "fdc" {
		ck.unsupported(where, []string{"<address>"})
		return nil
	}
	ide := bus == "ide" && !d.q35()
	wb, wu := DriveUnit(disk.Target.Dev, ide)
	dr := a.Drive
	if zero(dr.Controller) != 0 || zero(dr.Target) != 0 || zero(dr.Bus) != wb || zero(dr.Unit) != wu {
		ck.refuseAtStart("%s address: minivirt puts %s at controller 0 bus %d unit %d; remove the address or change the target dev to start the domain", where, disk.Target.Dev, wb, wu)
	}
	return nil
}

// SCSIAddress is where a disk on a SCSI bus sits: its drive address, or
// libvirt's default from its target name, whatever the controller's model:
// seven units per controller (sda is unit 0 of controller 0, sdh unit 0 of
// controller 1).
func (d *Domain) SCSIAddress(disk libvirtxml.DomainDisk) (controller, bus, target, unit uint) {
	if a := disk.Address; a != nil && a.Drive != nil {
		return zero(a.Drive.Controller), zero(a.Drive.Bus), zero(a.Drive.Target), zero(a.Drive.Unit)
	}
	n := DiskIndex(disk.Target.Dev)
	return n / 7, 0, 0, n % 7
}

// DiskIndex is the number a disk's target name gives it: vda, sda, hda
// and fda are 0, sdb is 1, sdaa is 26.
func DiskIndex(dev string) uint {
	n := uint(0)
	for _, r := range dev[2:] {
		n = n*26 + uint(r-'a'+1)
	}
	return n - 1
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
