package launcher

import (
	"fmt"
	"net"
	"net/url"
	"strings"

	"libvirt.org/go/libvirtxml"

	"github.com/minivirt/minivirt/pkg/domain"
)

// The guest's disks: their controllers (SCSI, a floppy controller on q35),
// the drive (a file, a block device, a network disk through QEMU's block
// layer, or no medium) and the device on its bus.

// diskFormatDefault is libvirt's format for a disk whose driver names none.
const diskFormatDefault = "raw"

// storageControllers adds the SCSI controllers (the domain's, and one of
// libvirt's default model for each a disk is on that the domain does not
// name, as libvirt adds them) and, on
// q35, a floppy controller for a floppy drive.
func (b *builder) storageControllers() error {
	d := b.d
	have := map[uint]bool{}
	for _, c := range d.Devices.Controllers {
		if c.Type != "scsi" {
			continue
		}
		index := uint(0)
		if c.Index != nil {
			index = *c.Index
		}
		have[index] = true
		model, _ := d.SCSIController(index)
		dev := fmt.Sprintf("%s,id=scsi%d", model, index) + domain.PCIAddr(c.Address)
		if dr := c.Driver; dr != nil && model == "virtio-scsi-pci" {
			if dr.Queues != nil {
				dev += fmt.Sprintf(",num_queues=%d", *dr.Queues)
			}
			if dr.CmdPerLUN != nil {
				dev += fmt.Sprintf(",cmd_per_lun=%d", *dr.CmdPerLUN)
			}
			if dr.MaxSectors != nil {
				dev += fmt.Sprintf(",max_sectors=%d", *dr.MaxSectors)
			}
			if dr.IOThread != 0 {
				dev += fmt.Sprintf(",iothread=iothread%d", dr.IOThread)
			}
		}
		b.add("-device", dev)
	}
	floppy := false
	for _, disk := range d.Devices.Disks {
		switch domain.DiskBus(disk) {
		case "scsi":
			c, _, _, _ := d.SCSIAddress(disk)
			if !have[c] { // libvirt's default model on x86
				have[c] = true
				b.add("-device", fmt.Sprintf("lsi53c895a,id=scsi%d", c))
			}
		case "fdc":
			floppy = true
		case "usb":
			b.usbBus()
		}
	}
	if floppy && b.q35() {
		b.add("-device", "isa-fdc,id=fdc0") // pc has one of its own
	}
	return nil
}

func (b *builder) disks() error {
	d := b.d
	for i, disk := range d.Devices.Disks {
		dev := disk.Target.Dev
		id := DriveID(dev)
		bus := domain.DiskBus(disk)
		drive, err := driveSource(disk)
		if err != nil {
			return err
		}
		drive += "if=none,id=" + id
		if !domain.Empty(disk) {
			drive += ",auto-read-only=off"
		}
		var opts []string
		empty := domain.Empty(disk)
		if dr := disk.Driver; dr != nil && !empty {
			// The medium's options: on an empty drive QEMU would try to
			// open a medium for them (a new one gets the defaults).
			if dr.Cache != "" && dr.Cache != "default" {
				opts = append(opts, "cache="+dr.Cache)
			}
			if dr.IO != "" {
				opts = append(opts, "aio="+dr.IO)
			}
			if dr.Discard != "" {
				opts = append(opts, "discard="+dr.Discard)
			}
		}
		if dr := disk.Driver; dr != nil { // the BlockBackend's own options
			if dr.DetectZeros != "" {
				opts = append(opts, "detect-zeroes="+dr.DetectZeros)
			}
			if dr.CopyOnRead == "on" {
				opts = append(opts, "copy-on-read=on")
			}
			if dr.ErrorPolicy != "" {
				opts = append(opts, "werror="+strings.Replace(dr.ErrorPolicy, "enospace", "enospc", 1))
			}
			if dr.RErrorPolicy != "" {
				opts = append(opts, "rerror="+dr.RErrorPolicy)
			}
		}
		removable := disk.Device == "cdrom" || disk.Device == "floppy"
		if disk.ReadOnly != nil || disk.Device == "cdrom" {
			opts = append(opts, "readonly=on")
		}
		if disk.Device == "cdrom" {
			opts = append(opts, "media=cdrom")
		}
		if disk.Transient != nil {
			// QEMU writes to a throwaway overlay, removed when it exits.
			opts = append(opts, "snapshot=on")
		}
		opts = append(opts, throttling(disk.IOTune)...)
		if len(opts) > 0 {
			drive += "," + strings.Join(opts, ",")
		}
		var device string
		switch bus {
		case "virtio":
			device = "virtio-blk-pci,drive=" + id + ",id=" + dev + domain.PCIAddr(disk.Address) + virtioBlkOptions(disk.Driver)
		case "scsi":
			kind := "scsi-hd"
			if disk.Device == "cdrom" {
				kind = "scsi-cd"
			}
			c, sbus, target, unit := d.SCSIAddress(disk)
			if model, _ := d.SCSIController(c); model == "virtio-scsi-pci" {
				device = fmt.Sprintf("%s,bus=scsi%d.0,channel=%d,scsi-id=%d,lun=%d,drive=%s,id=%s", kind, c, sbus, target, unit, id, dev)
			} else { // as libvirt: an LSI controller's units are its SCSI ids
				device = fmt.Sprintf("%s,bus=scsi%d.0,scsi-id=%d,drive=%s,id=%s", kind, c, unit, id, dev)
			}
			for _, o := range [...]struct{ name, value string }{{"wwn", disk.WWN}, {"vendor", disk.Vendor}, {"product", disk.Product}} {
				if o.value != "" {
					v := o.value
					if o.name == "wwn" && !strings.HasPrefix(v, "0x") {
						v = "0x" + v
					}
					device += "," + o.name + "=" + escapeOpt(v)
				}
			}
			if r := disk.Target.RotationRate; r != 0 {
				device += fmt.Sprintf(",rotation_rate=%d", r)
			}
			if disk.Target.Removable == "on" && kind == "scsi-hd" {
				device += ",removable=on"
			}
		case "usb":
			device = "usb-storage,drive=" + id + ",id=" + dev
			if disk.Target.Removable == "on" {
				device += ",removable=on"
			}
		case "fdc":
			device = fmt.Sprintf("floppy,unit=%d,drive=%s,id=%s", domain.DiskIndex(dev), id, dev)
		default:
			kind := "ide-hd"
			if disk.Device == "cdrom" {
				kind = "ide-cd"
			}
			ideBus, unit := domain.DriveUnit(dev, bus == "ide" && !b.q35())
			switch {
			case bus == "sata" && !b.q35():
				if b.ahci == "" {
					b.ahci = "sata0"
					b.add("-device", "ich9-ahci,id=sata0")
				}
				device = fmt.Sprintf("%s,drive=%s,id=%s,bus=sata0.%d", kind, id, dev, unit)
			case bus == "ide" && !b.q35():
				device = fmt.Sprintf("%s,drive=%s,id=%s,bus=ide.%d,unit=%d", kind, id, dev, ideBus, unit)
			default: // q35's AHCI ports are its ide.N buses
				device = fmt.Sprintf("%s,drive=%s,id=%s,bus=ide.%d", kind, id, dev, unit)
			}
			if r := disk.Target.RotationRate; r != 0 && kind == "ide-hd" {
				device += fmt.Sprintf(",rotation_rate=%d", r)
			}
		}
		if disk.Serial != "" {
			device += ",serial=" + escapeOpt(disk.Serial)
		}
		if disk.Shareable != nil {
			device += ",share-rw=on"
		}
		if bio := disk.BlockIO; bio != nil && bus != "fdc" {
			if bio.LogicalBlockSize != 0 {
				device += fmt.Sprintf(",logical_block_size=%d", bio.LogicalBlockSize)
			}
			if bio.PhysicalBlockSize != 0 {
				device += fmt.Sprintf(",physical_block_size=%d", bio.PhysicalBlockSize)
			}
			if bio.DiscardGranularity != nil {
				device += fmt.Sprintf(",discard_granularity=%d", *bio.DiscardGranularity)
			}
		}
		switch {
		case disk.Boot != nil:
			device += fmt.Sprintf(",bootindex=%d", disk.Boot.Order)
		case i == 0 && !removable && d.OS.Kernel == "" && len(d.OS.BootDevices) == 0 && !b.hasBootOrder():
			device += ",bootindex=1"
		}
		b.add("-drive", drive, "-device", device)
	}
	return nil
}

// driveSource is the -drive options of a disk's medium, each followed by a
// comma: file= and format=, the network disk's block driver options, or
// none for an empty drive.
//
// Every drive gets auto-read-only=off: -drive turns it on, and then QEMU reopens the file by
// its path to drop or regain write access (as a save does when it
// inactivates the disk), which fails once QEMU is chrooted and no longer
// root. The descriptor it opened serves.
func driveSource(disk libvirtxml.DomainDisk) (string, error) {
	if domain.Empty(disk) {
		return "", nil
	}
	format := diskFormatDefault
	if disk.Driver != nil && disk.Driver.Type != "" {
		format = disk.Driver.Type
	}
	s := disk.Source
	switch {
	case s.File != nil:
		return fmt.Sprintf("file=%s,format=%s,", escapeOpt(s.File.File), format), nil
	case s.Block != nil:
		return fmt.Sprintf("file=%s,format=%s,", escapeOpt(s.Block.Dev), format), nil
	case s.Network != nil:
		file, err := networkDrive(s.Network)
		if err != nil {
			return "", fmt.Errorf("disk %s: %w", disk.Target.Dev, err)
		}
		return file + ",format=" + format + ",", nil
	}
	return "", fmt.Errorf("disk %s: no source minivirt opens", disk.Target.Dev)
}

// networkDrive is the -drive file.* options of a network disk.
func networkDrive(n *libvirtxml.DomainDiskSourceNetwork) (string, error) {
	h := n.Hosts[0]
	switch n.Protocol {
	case "nbd":
		s := "file.driver=nbd"
		if h.Transport == "unix" {
			s += ",file.server.type=unix,file.server.path=" + escapeOpt(h.Socket)
		} else {
			port := h.Port
			if port == "" {
				port = "10809"
			}
			s += ",file.server.type=inet,file.server.host=" + escapeOpt(h.Name) + ",file.server.port=" + port // QEMU takes an IPv6 host bare here
		}
		if n.Name != "" {
			s += ",file.export=" + escapeOpt(n.Name)
		}
		return s, nil
	case "http", "https", "ftp", "ftps":
		host := h.Name
		switch {
		case h.Port != "":
			host = net.JoinHostPort(h.Name, h.Port)
		case strings.Contains(host, ":"):
			host = "[" + host + "]" // an IPv6 address
		}
		u := url.URL{Scheme: n.Protocol, Host: host, Path: "/" + strings.TrimPrefix(n.Name, "/"), RawQuery: n.Query}
		return "file.driver=" + n.Protocol + ",file.url=" + escapeOpt(u.String()), nil
	case "iscsi":
		port := h.Port
		if port == "" {
			port = "3260"
		}
		target, lun, _ := strings.Cut(n.Name, "/")
		if lun == "" {
			lun = "0"
		}
		return fmt.Sprintf("file.driver=iscsi,file.transport=tcp,file.portal=%s,file.target=%s,file.lun=%s",
			escapeOpt(net.JoinHostPort(h.Name, port)), escapeOpt(target), escapeOpt(lun)), nil
	}
	return "", fmt.Errorf("network protocol %q: not one minivirt opens", n.Protocol)
}

// virtioBlkOptions are the virtio-blk device options of a disk's driver.
func virtioBlkOptions(dr *libvirtxml.DomainDiskDriver) string {
	if dr == nil {
		return ""
	}
	s := ""
	if dr.Queues != nil {
		s += fmt.Sprintf(",num-queues=%d", *dr.Queues)
	}
	if dr.QueueSize != nil {
		s += fmt.Sprintf(",queue-size=%d", *dr.QueueSize)
	}
	if dr.EventIDX != "" {
		s += ",event_idx=" + dr.EventIDX
	}
	if dr.IOEventFD != "" {
		s += ",ioeventfd=" + dr.IOEventFD
	}
	if dr.IOThread != nil {
		s += fmt.Sprintf(",iothread=iothread%d", *dr.IOThread)
	}
	return s
}

// throttling is QEMU's -drive throttling options of <iotune>.
func throttling(t *libvirtxml.DomainDiskIOTune) []string {
	if t == nil {
		return nil
	}
	var out []string
	for _, o := range [...]struct {
		name  string
		value uint64
	}{
		{"bps-total", t.TotalBytesSec}, {"bps-read", t.ReadBytesSec}, {"bps-write", t.WriteBytesSec},
		{"iops-total", t.TotalIopsSec}, {"iops-read", t.ReadIopsSec}, {"iops-write", t.WriteIopsSec},
		{"bps-total-max", t.TotalBytesSecMax}, {"bps-read-max", t.ReadBytesSecMax}, {"bps-write-max", t.WriteBytesSecMax},
		{"iops-total-max", t.TotalIopsSecMax}, {"iops-read-max", t.ReadIopsSecMax}, {"iops-write-max", t.WriteIopsSecMax},
		{"bps-total-max-length", t.TotalBytesSecMaxLength}, {"bps-read-max-length", t.ReadBytesSecMaxLength},
		{"bps-write-max-length", t.WriteBytesSecMaxLength}, {"iops-total-max-length", t.TotalIopsSecMaxLength},
		{"iops-read-max-length", t.ReadIopsSecMaxLength}, {"iops-write-max-length", t.WriteIopsSecMaxLength},
		{"iops-size", t.SizeIopsSec},
	} {
		if o.value != 0 {
			out = append(out, fmt.Sprintf("throttling.%s=%d", o.name, o.value))
		}
	}
	if t.GroupName != "" {
		out = append(out, "throttling.group="+escapeOpt(t.GroupName))
	}
	return out
}
