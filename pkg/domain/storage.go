package domain

import (
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// The rules of the guest's storage: each <disk>, its target, bus and drive
// address, source, driver, and transient, boot and serial settings. The rules
// of its controller (sata, ide), with every other <controller>'s, are in
// hardware.go.

var (
	diskTargetPattern = lazyRegexp(`^(vd|sd|hd)[a-z]{1,3}$`)
	diskBuses         = []string{"virtio", "sata", "ide"}
	diskFormats       = []string{"raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc"}
	diskCaches        = []string{"default", "none", "writethrough", "writeback", "directsync", "unsafe"}
	diskIO            = []string{"native", "threads", "io_uring"}
	diskErrorPolicies = []string{"stop", "report", "ignore", "enospace"}
)

func (d *Domain) validateDisks() error {
	seen := map[string]bool{}
	for _, disk := range d.Devices.Disks {
		if disk.Target == nil || !diskTargetPattern().MatchString(disk.Target.Dev) {
			dev := ""
			if disk.Target != nil {
				dev = disk.Target.Dev
			}
			return fmt.Errorf("disk target dev %q: must be a name such as vda, sda or hdc", dev)
		}
		where := "disk " + disk.Target.Dev
		if seen[disk.Target.Dev] {
			return fmt.Errorf("%s: target dev used twice", where)
		}
		seen[disk.Target.Dev] = true
		if err := notSupported(where, unhandled(&disk, "Device", "Driver", "Source", "Target", "ReadOnly", "Shareable",
			"Transient", "Serial", "Boot", "Alias", "Address")); err != nil {
			return err
		}
		if err := oneOf(where+" device", disk.Device, []string{"disk", "cdrom"}); err != nil {
			return err
		}
		if err := notSupported(where+" target", unhandled(disk.Target, "Dev", "Bus", "Tray")); err != nil {
			return err
		}
		if err := oneOf(where+" target bus", disk.Target.Bus, diskBuses); err != nil {
			return err
		}
		bus := disk.Target.Bus
		if bus == "" {
			bus = map[string]string{"vd": "virtio", "sd": "sata", "hd": "ide"}[disk.Target.Dev[:2]]
		}
		if err := d.checkDriveAddress(where, disk, bus); err != nil {
			return err
		}
		if disk.Target.Tray != "" && (disk.Device != "cdrom" || disk.Target.Tray != "closed") {
			return fmt.Errorf("%s target tray %q: minivirt starts every cdrom closed; remove it", where, disk.Target.Tray)
		}
		if err := validateDiskSource(where, disk); err != nil {
			return err
		}
		if dr := disk.Driver; dr != nil {
			if err := notSupported(where+" driver", unhandled(dr, "Name", "Type", "Cache", "IO", "Discard", "DetectZeros",
				"ErrorPolicy", "RErrorPolicy")); err != nil {
				return err
			}
			for _, c := range [...]struct {
				elem, value string
				allowed     []string
			}{
				{"name", dr.Name, []string{"qemu"}}, {"type", dr.Type, diskFormats}, {"cache", dr.Cache, diskCaches},
				{"io", dr.IO, diskIO}, {"discard", dr.Discard, []string{"unmap", "ignore"}},
				{"detect_zeroes", dr.DetectZeros, []string{"off", "on", "unmap"}},
				{"error_policy", dr.ErrorPolicy, diskErrorPolicies}, {"rerror_policy", dr.RErrorPolicy, diskErrorPolicies},
			} {
				if err := oneOf(where+" driver "+c.elem, c.value, c.allowed); err != nil {
					return err
				}
			}
			if dr.IO == "native" && dr.Cache != "none" && dr.Cache != "directsync" {
				return fmt.Errorf("%s driver io='native': needs cache='none' or 'directsync' (QEMU refuses it otherwise)", where)
			}
		}
		if disk.Transient != nil {
			if disk.Transient.ShareBacking != "" {
				return notSupported(where+" transient", []string{"attribute shareBacking"})
			}
			if disk.ReadOnly != nil || disk.Shareable != nil || disk.Device == "cdrom" {
				return fmt.Errorf("%s transient: only for a writable, unshared disk", where)
			}
		}
		if disk.Boot != nil && disk.Boot.LoadParm != "" {
			return notSupported(where+" boot", []string{"attribute loadparm"})
		}
		if strings.ContainsAny(disk.Serial, ",\x00") || len(disk.Serial) > 20 {
			return fmt.Errorf("%s serial %q: at most 20 characters, no commas", where, disk.Serial)
		}
	}
	return nil
}

func validateDiskSource(where string, disk libvirtxml.DomainDisk) error {
	s := disk.Source
	if s == nil || s.File == nil && s.Block == nil {
		if disk.Device == "cdrom" && s == nil {
			return fmt.Errorf("%s: an empty cdrom is not supported by minivirt; give <source file=''/>", where)
		}
		return fmt.Errorf("%s: source must be type='file' (an image) or type='block' (a host block device)", where)
	}
	if err := notSupported(where+" source", unhandled(s, "File", "Block")); err != nil {
		return err
	}
	if s.File != nil {
		if err := notSupported(where+" source", unhandled(s.File, "File")); err != nil {
			return err
		}
		return absPath(where+" source file", s.File.File)
	}
	if err := notSupported(where+" source", unhandled(s.Block, "Dev")); err != nil {
		return err
	}
	return absPath(where+" source dev", s.Block.Dev)
}
