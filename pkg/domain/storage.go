package domain

import (
	"fmt"
	"reflect"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// The rules of the guest's storage: each <disk>, its target, bus and drive
// address, source, driver, and transient, boot and serial settings. The rules
// of its controller (sata, ide), with every other <controller>'s, are in
// hardware.go.

var (
	diskTargetPattern = lazyRegexp(`^(vd|sd|hd|fd)[a-z]{1,3}$`)
	diskBuses         = []string{"virtio", "sata", "ide", "scsi", "usb", "fdc"}
	diskFormats       = []string{"raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc"}
	diskCaches        = []string{"default", "none", "writethrough", "writeback", "directsync", "unsafe"}
	diskIO            = []string{"native", "threads", "io_uring"}
	diskErrorPolicies = []string{"stop", "report", "ignore", "enospace"}
	// networkProtocols are the network disk protocols minivirt gives QEMU's
	// block layer, with the URL scheme QEMU's curl driver takes.
	networkProtocols = []string{"nbd", "http", "https", "ftp", "ftps", "iscsi"}
)

// DiskBus is the bus a disk is on: its target's bus, or the one its name
// implies (vd: virtio, sd: sata, hd: ide, fd: fdc).
func DiskBus(disk libvirtxml.DomainDisk) string {
	if disk.Target.Bus != "" {
		return disk.Target.Bus
	}
	return map[string]string{"vd": "virtio", "sd": "sata", "hd": "ide", "fd": "fdc"}[disk.Target.Dev[:2]]
}

// Empty reports whether a removable disk (cdrom, floppy) has no medium.
func Empty(disk libvirtxml.DomainDisk) bool {
	s := disk.Source
	return s == nil || s.File != nil && s.File.File == "" || s.Block != nil && s.Block.Dev == ""
}

func (ck *checker) validateDisks() error {
	d := ck.d
	seen := map[string]bool{}
	for _, disk := range d.Devices.Disks {
		if disk.Target == nil || !diskTargetPattern().MatchString(disk.Target.Dev) {
			dev := ""
			if disk.Target != nil {
				dev = disk.Target.Dev
			}
			return fmt.Errorf("disk target dev %q: must be a name such as vda, sda, hdc or fda", dev)
		}
		where := "disk " + disk.Target.Dev
		if seen[disk.Target.Dev] {
			return fmt.Errorf("%s: target dev used twice", where)
		}
		seen[disk.Target.Dev] = true
		ck.unsupported(where, unhandled(&disk, "Device", "Driver", "Source", "Target", "ReadOnly", "Shareable",
			"Transient", "Serial", "Boot", "Alias", "Address", "BackingStore", "IOTune", "BlockIO", "WWN", "Vendor", "Product"))
		if err := oneOf(where+" device", disk.Device, []string{"disk", "cdrom", "floppy", "lun"}); err != nil {
			return err
		}
		if disk.Device == "lun" {
			ck.refuseAtStart("%s device lun: minivirt passes no host SCSI device through; use device='disk' to start the domain", where)
			continue
		}
		ck.unsupported(where+" target", unhandled(disk.Target, "Dev", "Bus", "Tray", "Removable", "RotationRate"))
		if err := oneOf(where+" target bus", disk.Target.Bus, append(diskBuses, "xen", "sd", "uml")); err != nil {
			return err
		}
		bus := DiskBus(disk)
		if !contains(diskBuses, bus) {
			ck.refuseAtStart("%s target bus %q: an x86 QEMU guest has virtio, sata, ide, scsi, usb and fdc; change it to start the domain", where, bus)
			continue
		}
		if (bus == "fdc") != (disk.Device == "floppy") {
			return fmt.Errorf("%s: a floppy is on bus fdc, and only a floppy; use device='floppy' with target dev 'fda' or 'fdb', or another bus", where)
		}
		if bus == "usb" && disk.Device == "cdrom" {
			ck.refuseAtStart("%s: a cdrom on bus usb is not supported by minivirt; use sata or scsi to start the domain", where)
		}
		if err := ck.checkDriveAddress(where, disk, bus); err != nil {
			return err
		}
		removable := disk.Device == "cdrom" || disk.Device == "floppy"
		if t := disk.Target.Tray; t != "" {
			if !removable {
				return fmt.Errorf("%s target tray %q: only a cdrom or floppy has a tray", where, t)
			}
			if err := oneOf(where+" target tray", t, []string{"open", "closed"}); err != nil {
				return err
			}
		}
		if disk.Target.Removable != "" && bus != "usb" && bus != "scsi" {
			ck.unsupported(where+" target", []string{"attribute removable"})
		}
		if disk.Target.RotationRate != 0 && bus == "virtio" {
			ck.unsupported(where+" target", []string{"attribute rotation_rate"})
		}
		if err := ck.validateDiskSource(where, disk); err != nil {
			return err
		}
		if Empty(disk) && disk.BackingStore != nil && !backingEnd(disk.BackingStore) {
			return fmt.Errorf("%s backingStore: an empty drive has no image to back; remove it", where)
		}
		if bs := disk.BackingStore; bs != nil && disk.Source != nil && disk.Source.Network != nil && !backingEnd(bs) {
			ck.refuseAtStart("%s backingStore: minivirt checks the chain of a file or block device only; remove <backingStore> to start the domain", where)
		}
		if err := ck.validateDiskDriver(where, disk, bus); err != nil {
			return err
		}
		if disk.Transient != nil {
			if disk.Transient.ShareBacking != "" {
				ck.unsupported(where+" transient", []string{"attribute shareBacking"})
			}
			if disk.ReadOnly != nil || disk.Shareable != nil || removable {
				return fmt.Errorf("%s transient: only for a writable, unshared disk", where)
			}
		}
		if disk.Boot != nil && disk.Boot.LoadParm != "" {
			ck.unsupported(where+" boot", []string{"attribute loadparm"})
		}
		if strings.ContainsRune(disk.Serial, 0) {
			return fmt.Errorf("%s serial %q: contains a NUL byte", where, disk.Serial)
		}
		if len(disk.Serial) > 20 && bus != "scsi" {
			ck.refuseAtStart("%s serial %q: %d characters; the guest sees at most 20 on bus %s (QEMU would cut it); shorten it to start the domain", where, disk.Serial, len(disk.Serial), bus)
		}
		if (disk.WWN != "" || disk.Vendor != "" || disk.Product != "") && bus != "scsi" {
			ck.refuseAtStart("%s: wwn, vendor and product are for a disk on bus scsi; remove them to start the domain", where)
		}
		for _, v := range [...]struct{ elem, value string }{{"vendor", disk.Vendor}, {"product", disk.Product}} {
			if strings.ContainsAny(v.value, ",\x00") {
				return fmt.Errorf("%s %s %q: no commas", where, v.elem, v.value)
			}
		}
		if disk.WWN != "" && !wwnPattern().MatchString(disk.WWN) {
			return fmt.Errorf("%s wwn %q: must be 16 hexadecimal digits", where, disk.WWN)
		}
		if b := disk.BlockIO; b != nil {
			ck.unsupported(where+" blockio", unhandled(b, "LogicalBlockSize", "PhysicalBlockSize", "DiscardGranularity"))
		}
		if t := disk.IOTune; t != nil && t.GroupName != "" && strings.ContainsAny(t.GroupName, ",\x00") {
			return fmt.Errorf("%s iotune group_name %q: no commas", where, t.GroupName)
		}
	}
	return nil
}

var wwnPattern = lazyRegexp(`^(0x)?[0-9A-Fa-f]{16}$`)

func (ck *checker) validateDiskDriver(where string, disk libvirtxml.DomainDisk, bus string) error {
	dr := disk.Driver
	if dr == nil {
		return nil
	}
	ck.unsupported(where+" driver", unhandled(dr, "Name", "Type", "Cache", "IO", "Discard", "DetectZeros",
		"ErrorPolicy", "RErrorPolicy", "Queues", "QueueSize", "EventIDX", "IOEventFD", "IOThread", "CopyOnRead"))
	for _, c := range [...]struct {
		elem, value string
		allowed     []string
	}{
		{"name", dr.Name, []string{"qemu"}}, {"type", dr.Type, diskFormats}, {"cache", dr.Cache, diskCaches},
		{"io", dr.IO, diskIO}, {"discard", dr.Discard, []string{"unmap", "ignore"}},
		{"detect_zeroes", dr.DetectZeros, []string{"off", "on", "unmap"}},
		{"error_policy", dr.ErrorPolicy, diskErrorPolicies}, {"rerror_policy", dr.RErrorPolicy, []string{"stop", "report", "ignore"}},
		{"event_idx", dr.EventIDX, onOff}, {"ioeventfd", dr.IOEventFD, onOff}, {"copy_on_read", dr.CopyOnRead, onOff},
	} {
		if err := oneOf(where+" driver "+c.elem, c.value, c.allowed); err != nil {
			return err
		}
	}
	if dr.IO == "native" && dr.Cache != "none" && dr.Cache != "directsync" {
		return fmt.Errorf("%s driver io='native': needs cache='none' or 'directsync' (QEMU refuses it otherwise)", where)
	}
	if bus != "virtio" {
		for _, o := range [...]struct {
			name string
			set  bool
		}{{"queues", dr.Queues != nil}, {"queue_size", dr.QueueSize != nil}, {"event_idx", dr.EventIDX != ""},
			{"ioeventfd", dr.IOEventFD != ""}, {"iothread", dr.IOThread != nil}} {
			if o.set {
				return fmt.Errorf("%s driver %s: only for a disk on bus virtio", where, o.name)
			}
		}
	}
	if dr.Queues != nil && (*dr.Queues == 0 || *dr.Queues > 1024) {
		return fmt.Errorf("%s driver queues %d: must be 1-1024", where, *dr.Queues)
	}
	if dr.QueueSize != nil && (*dr.QueueSize < 2 || *dr.QueueSize > 1024 || *dr.QueueSize&(*dr.QueueSize-1) != 0) {
		return fmt.Errorf("%s driver queue_size %d: must be a power of two, 2-1024", where, *dr.QueueSize)
	}
	if dr.IOThread != nil && !ck.d.hasIOThread(*dr.IOThread) {
		return fmt.Errorf("%s driver iothread %d: the domain has no such iothread; add it to <iothreads>", where, *dr.IOThread)
	}
	return nil
}

func (ck *checker) validateDiskSource(where string, disk libvirtxml.DomainDisk) error {
	s := disk.Source
	removable := disk.Device == "cdrom" || disk.Device == "floppy"
	if Empty(disk) {
		if !removable {
			return fmt.Errorf("%s: no source; a disk needs <source file=''/> (an image), dev (a block device) or a network source", where)
		}
		return nil
	}
	ck.unsupported(where+" source", unhandled(s, "File", "Block", "Network", "Index"))
	switch {
	case s.File != nil:
		ck.unsupported(where+" source", unhandled(s.File, "File"))
		return absPath(where+" source file", s.File.File)
	case s.Block != nil:
		ck.unsupported(where+" source", unhandled(s.Block, "Dev"))
		return absPath(where+" source dev", s.Block.Dev)
	case s.Network != nil:
		p := s.Network.Protocol
		if (p == "http" || p == "https" || p == "ftp" || p == "ftps") && disk.ReadOnly == nil && disk.Device != "cdrom" {
			ck.refuseAtStart("%s source protocol %s: QEMU reads %s disks only; add <readonly/> to start the domain", where, p, p)
		}
		return ck.validateNetworkSource(where, s.Network)
	}
	ck.refuseAtStart("%s source %s: minivirt opens images (file), block devices (block) and nbd, http(s), ftp(s) and iscsi disks (network); change it to start the domain",
		where, strings.Join(unhandled(s, "StartupPolicy", "Index", "Encryption", "Reservations", "Slices", "SSL", "Cookies", "Readahead", "Timeout", "DataStore"), ""))
	return nil
}

func (ck *checker) validateNetworkSource(where string, n *libvirtxml.DomainDiskSourceNetwork) error {
	where += " source protocol " + n.Protocol
	if !contains(networkProtocols, n.Protocol) {
		ck.refuseAtStart("%s: minivirt opens network disks over %s; change it to start the domain", where, strings.Join(networkProtocols, ", "))
		return nil
	}
	ck.unsupported(where, unhandled(n, "Protocol", "Name", "Query", "Hosts"))
	if len(n.Hosts) != 1 {
		return fmt.Errorf("%s: give one <host>", where)
	}
	h := n.Hosts[0]
	ck.unsupported(where+" host", unhandled(&h, "Transport", "Name", "Port", "Socket"))
	switch h.Transport {
	case "", "tcp":
		if h.Name == "" {
			return fmt.Errorf("%s host: needs name=''", where)
		}
		if h.Port != "" {
			if err := checkHostPort(where+" host", h.Name, h.Port); err != nil {
				return err
			}
		} else if !hostPattern().MatchString(h.Name) {
			return fmt.Errorf("%s host name %q: must be a host name or an IP address", where, h.Name)
		}
	case "unix":
		if n.Protocol != "nbd" {
			return fmt.Errorf("%s host transport unix: only nbd is served on a Unix socket", where)
		}
		if err := socketPath(where+" host socket", h.Socket); err != nil {
			return err
		}
	default:
		ck.refuseAtStart("%s host transport %q: minivirt connects over tcp or unix; change it to start the domain", where, h.Transport)
	}
	if strings.ContainsAny(n.Name+n.Query, "\x00") {
		return fmt.Errorf("%s name %q: contains a NUL byte", where, n.Name)
	}
	return nil
}

// backingEnd reports whether bs is an empty <backingStore/>: the chain
// ends there.
func backingEnd(bs *libvirtxml.DomainDiskBackingStore) bool {
	return bs.BackingStore == nil && (bs.Source == nil || reflect.ValueOf(*bs.Source).IsZero())
}

// Medium returns the image in the removable drive dev ("" when empty).
func (d *Domain) Medium(dev string) (string, error) {
	for _, disk := range d.Devices.Disks {
		if disk.Target.Dev != dev {
			continue
		}
		if disk.Device != "cdrom" && disk.Device != "floppy" {
			return "", fmt.Errorf("disk %s: a disk has no removable medium; only a cdrom or floppy does", dev)
		}
		switch s := disk.Source; {
		case Empty(disk):
			return "", nil
		case s.File != nil:
			return s.File.File, nil
		case s.Block != nil:
			return s.Block.Dev, nil
		}
		return "a network disk", nil
	}
	return "", fmt.Errorf("disk %s: the domain has no such disk", dev)
}

// CheckMediaChange refuses what virsh change-media refuses: to insert into
// a drive that has a medium, or to eject an empty one.
func (d *Domain) CheckMediaChange(dev string, mode MediaMode) error {
	cur, err := d.Medium(dev)
	if err != nil {
		return err
	}
	switch {
	case mode == MediaInsert && cur != "":
		return fmt.Errorf("disk %s: has a medium already (%s); use --update to swap it", dev, cur)
	case mode == MediaEject && cur == "":
		return fmt.Errorf("disk %s: has no medium to eject", dev)
	}
	return nil
}

// MediaMode is what change-media does: virsh's --eject, --insert, --update.
type MediaMode string

// The change-media modes.
const (
	MediaEject  MediaMode = "eject"
	MediaInsert MediaMode = "insert"
	MediaUpdate MediaMode = "update"
)

// SetMedium puts the image at path in the removable drive dev (a cdrom or
// floppy), or empties it when path is "".
func (d *Domain) SetMedium(dev, path string) error {
	disks := append([]libvirtxml.DomainDisk(nil), d.Devices.Disks...)
	for i := range disks {
		disk := &disks[i]
		if disk.Target.Dev != dev {
			continue
		}
		if disk.Device != "cdrom" && disk.Device != "floppy" {
			return fmt.Errorf("disk %s: a disk has no removable medium; only a cdrom or floppy does", dev)
		}
		disk.BackingStore = nil // the old medium's chain is not the new one's
		if path == "" {         // an empty drive keeps its type: <disk type='file'> with no <source>
			if disk.Source != nil && disk.Source.Block != nil {
				disk.Source = &libvirtxml.DomainDiskSource{Block: &libvirtxml.DomainDiskSourceBlock{}}
			} else {
				disk.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{}}
			}
		} else {
			if err := absPath("disk "+dev+" source file", path); err != nil {
				return err
			}
			disk.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: path}}
		}
		devices := *d.Devices
		devices.Disks = disks
		d.Devices = &devices
		return d.Validate()
	}
	return fmt.Errorf("disk %s: the domain has no such disk", dev)
}
