package domain

import (
	"fmt"
	"sort"
	"strings"
)

// Class is what minivirt does with an element of libvirt's domain XML.
type Class string

// The four classes. Every element is in one; none is dropped or misread,
// and a change of class is a change of code and of its test.
const (
	// ActedOn: minivirt gives the guest what the element says.
	ActedOn Class = "acted on"
	// Kept: stored and written back, said on define, on start and by
	// status and dominfo; it changes nothing the guest can see.
	Kept Class = "kept and said"
	// RefusedAtStart: a valid domain (libvirt defines it, so minivirt
	// does) that needs what this host or minivirt cannot give it; start
	// refuses it with one line that names it, and define says so.
	RefusedAtStart Class = "refused at start"
	// RefusedAtDefine: invalid, or what minivirt could only get wrong;
	// define fails with one line that names it.
	RefusedAtDefine Class = "refused at define"
)

// Element is one row of the table in the README.
type Element struct {
	Name  string
	Class Class
	How   string
}

// Elements is the table of libvirt domain elements a user will have, and
// what minivirt does with each. Validate, CheckStart and Warnings implement
// it; a test holds the README's table to it, and TestElementClasses each
// row to the code.
var Elements = []Element{
	{"name, uuid, title", ActedOn, "name and uuid given to QEMU (-name, -uuid); title kept"},
	{"memory, currentMemory", ActedOn, "-m; currentMemory below memory is the balloon's target, set before the guest runs (a virtio balloon is added when the domain has none)"},
	{"maxMemory, memory model='dimm'", ActedOn, "-m size,slots,maxmem; each DIMM a memory backend and a pc-dimm; as in libvirt, memory counts the DIMMs"},
	{"memoryBacking source, access, hugepages, locked, nosharepages, allocation, discard", ActedOn, "a memory backend for the guest's RAM (memfd, file or anonymous; share=on; hugetlb; prealloc), -overcommit mem-lock, mem-merge=off; huge pages the host lacks are refused at start"},
	{"cpu numa cells", ActedOn, "one memory backend and -numa node per cell, with its CPUs and memAccess"},
	{"vcpu (current, placement='static')", ActedOn, "-smp current,maxcpus=N; placement='auto' refused"},
	{"iothreads, iothreadids, disk and controller driver iothread", ActedOn, "-object iothread per id, given to virtio-blk and virtio-scsi"},
	{"sysinfo type smbios with os smbios mode='sysinfo', sysinfo type fwcfg", ActedOn, "-smbios type 0, 1, 2, 3 and 11 (OEM strings); -fw_cfg; mode host refused at start"},
	{"genid", ActedOn, "vmgenid, with the given id or a new one at each start"},
	{"os type (arch x86_64, machine)", ActedOn, "-machine; other architectures refused"},
	{"os kernel, initrd, cmdline", ActedOn, "direct kernel boot"},
	{"os boot dev, bootmenu", ActedOn, "-boot order=..., menu=on"},
	{"boot order on a disk or interface", ActedOn, "bootindex"},
	{"nothing to boot (no kernel, disk, firmware or network boot)", RefusedAtStart, "os: nothing to boot, as libvirt users know it, at start"},
	{"os firmware='efi', loader, nvram", ActedOn, "OVMF from Debian's ovmf as pflash; the per-domain NVRAM copy lives in the state directory; Secure Boot refused"},
	{"features acpi, apic, pae, vmport, smm", ActedOn, "ACPI is always on (without <acpi/> refused at start); vmport and smm as -machine options; other features refused at start"},
	{"cpu mode, model, topology, feature", ActedOn, "-cpu (host or max under TCG), sockets/dies/cores/threads, +feature/-feature; cache refused at start"},
	{"clock offset utc, localtime, absolute; timer rtc/pit/hpet/kvmclock", ActedOn, "-rtc base=,driftfix=; hpet present='no' turns HPET off; offset variable and timezone, other timers refused at start"},
	{"pm suspend-to-mem, suspend-to-disk", ActedOn, "disable_s3/disable_s4 on the machine's power-management device"},
	{"on_poweroff, on_reboot, on_crash", ActedOn, "destroy, restart, preserve; coredump-*, rename-restart and preserve-running refused at start"},
	{"disk type file and block, device disk, cdrom, floppy", ActedOn, "virtio-blk, SATA (AHCI), IDE, SCSI, USB or a floppy drive"},
	{"disk type network: nbd, http, https, ftp, ftps, iscsi", ActedOn, "QEMU's block layer (nbd over TCP or a Unix socket; curl and iscsi drivers when Debian's qemu-block-extra is installed, else refused at start)"},
	{"empty cdrom and floppy, target tray", ActedOn, "a drive with no medium; tray='open' opened before the guest runs; change-media inserts, ejects and updates"},
	{"backingStore", ActedOn, "checked at start against the image's own chain (qemu-img), level by level; a chain that disagrees is refused"},
	{"disk driver type, cache, io, discard, detect_zeroes, error_policy, copy_on_read", ActedOn, "-drive options of the same names"},
	{"disk driver queues, queue_size, event_idx, ioeventfd", ActedOn, "virtio-blk num-queues, queue-size, event_idx, ioeventfd"},
	{"disk iotune, blockio, wwn, vendor, product, rotation_rate", ActedOn, "-drive throttling.*; the device's block sizes, SCSI identity and rotation rate"},
	{"disk readonly, shareable, serial, transient", ActedOn, "read-only, share-rw, serial=; transient: a throwaway overlay (snapshot=on), the image untouched"},
	{"controller scsi (virtio-scsi, lsilogic)", ActedOn, "virtio-scsi-pci (queues, iothread) or lsi53c895a; libvirt's default lsilogic when a SCSI disk names none"},
	{"interface type='user' (mac, model, boot, link up, portForward tcp)", ActedOn, "QEMU's user network, portForward as hostfwd"},
	{"interface type='network'", ActedOn, "minivirt's user network with NAT (libvirt's default network is NAT too), said on define"},
	{"interface types bridge, direct, ethernet, hostdev, vhostuser, vdpa, udp, mcast, server, client", RefusedAtStart, "minivirt runs QEMU unprivileged and makes no host network devices"},
	{"vmchannel (minivirt's metadata, or <interface type='vmchannel'>)", ActedOn, "one host accept per guest connection"},
	{"forward (minivirt's metadata)", ActedOn, "host TCP address or Unix socket to a guest port, one guest connection per host connection"},
	{"channel unix guestfwd", ActedOn, "a vmchannel"},
	{"channel virtio: unix bind (source path optional) or connect, pty, tcp, udp, dev, file, null", ActedOn, "virtserialport; a unix bind socket minivirt binds (in the run directory without a path, shown by status)"},
	{"serial, console: pty, file, unix, tcp, udp, dev, null; log file; serial target isa-serial, pci-serial, isa-debug", ActedOn, "the first is the console minivirt logs and serves; tcp with telnet and reconnect; target type='virtio' gives the guest hvc0"},
	{"controller usb, pci (pcie-root-port), virtio-serial, sata, ide, fdc", ActedOn, "the matching QEMU device; other controller models refused at start"},
	{"memballoon virtio, rng virtio, panic", ActedOn, "virtio-balloon, virtio-rng (random or builtin backend), pvpanic"},
	{"watchdog i6300esb, ib700, itco with its action", ActedOn, "the device and -action watchdog= (reset, shutdown, poweroff, pause, none, inject-nmi); dump refused at start"},
	{"filesystem type mount, driver path (9p) or virtiofs", ActedOn, "9p: -fsdev local in QEMU; virtiofs: QEMU's virtiofsd, started, sandboxed and stopped by the supervisor, the guest's RAM shared by memfd"},
	{"qemu:commandline", ActedOn, "arguments and environment passed to QEMU; options minivirt passes itself refused; status says tainted"},
	{"description, metadata of other applications", Kept, "stored and written back as given"},
	{"cputune, numatune, memtune, blkiotune, resource, vcpu cpuset", Kept, "pinning and host limits: they change nothing the guest sees; said on define and start, shown by status and dominfo"},
	{"video, input, sound", ActedOn, "the guest gets the device (VGA, virtio-vga, QXL, ...; PS/2, USB or virtio input; HDA, AC97, ES1370 with no host audio); nobody sees or hears it: QEMU runs headless"},
	{"graphics, audio, redirdev type='spicevmc'", Kept, "not served: minivirt runs QEMU headless (-display none) and opens no VNC or SPICE port; said at define"},
	{"alias (user aliases)", Kept, "a name for management tools; the guest never sees it"},
	{"seclabel type='none'", Kept, "minivirt has no security driver"},
	{"seclabel type dynamic or static", RefusedAtDefine, "a security label minivirt cannot apply: it has no security driver (QEMU runs under seccomp, unprivileged, chrooted)"},
	{"os loader secure='yes', firmware feature secure-boot or enrolled-keys", RefusedAtDefine, "Secure Boot keys minivirt cannot enroll"},
	{"address type pci (root bus), type drive, type virtio-serial", ActedOn, "PCI slot and function as addr=; a drive address where the target name puts the disk (any unit on SCSI); the port of a virtio channel"},
	{"address of other types or buses (ccw, usb, isa, a PCI bridge)", RefusedAtStart, "named at start; remove the address"},
	{"hostdev, tpm, vsock, smartcard, parallel, redirdev type usb, shmem, iommu, memory models other than dimm, launchSecurity", RefusedAtStart, "a host device or a service minivirt does not provide; named at start"},
	{"any other element or attribute libvirt defines that minivirt does not act on", RefusedAtStart, "named at start, with the element's path; kept as given"},
	{"any element or attribute libvirtxml does not know, or a second <name>", RefusedAtDefine, "named at define: it would be lost"},
	{"an invalid value (a relative path, an unknown model, a port out of range)", RefusedAtDefine, "named at define, with the value and the fix"},
}

// Warnings names what define says out loud: what the definition holds
// that minivirt keeps but does not act on, what it maps (a libvirt network
// to minivirt's user network), and what keeps it from starting here.
func (d *Domain) Warnings() []string {
	var kept []string
	if d.Title != "" {
		kept = append(kept, "<title>")
	}
	if d.Description != "" {
		kept = append(kept, "<description>")
	}
	if len(d.otherMetadata) > 0 {
		kept = append(kept, "<metadata> of other applications")
	}
	if len(d.SecLabel) > 0 {
		kept = append(kept, "<seclabel type='none'>")
	}
	aliases := 0
	for _, disk := range d.Devices.Disks {
		if disk.Alias != nil {
			aliases++
		}
	}
	if aliases > 0 {
		kept = append(kept, "<alias>")
	}
	var out []string
	if len(kept) > 0 {
		sort.Strings(kept)
		out = append(out, "kept, not acted on: "+strings.Join(kept, ", "))
	}
	out = append(out, d.StartWarnings()...)
	var ui []string
	for _, u := range [...]struct {
		name string
		n    int
	}{{"graphics", len(d.Devices.Graphics)}, {"audio", len(d.Devices.Audios)}, {"redirdev", len(d.Devices.RedirDevs)}} {
		if u.n > 0 {
			ui = append(ui, fmt.Sprintf("<%s>", u.name))
		}
	}
	if len(ui) > 0 {
		out = append(out, "kept, not served: "+strings.Join(ui, ", ")+" (minivirt runs QEMU headless and opens no display or audio on the host)")
	}
	if d.Tainted() {
		out = append(out, "<qemu:commandline> passes options minivirt did not write: status will say tainted")
	}
	for _, why := range d.RefusedAtStart() {
		out = append(out, "start will refuse it: "+why)
	}
	return out
}

// StartWarnings are said at every start: the tuning minivirt keeps but
// does not apply, and a libvirt network minivirt gives its user network.
func (d *Domain) StartWarnings() []string {
	var out []string
	if k := d.KeptElements(); len(k) > 0 {
		out = append(out, "kept, not applied: "+strings.Join(k, ", ")+" (pinning and host limits change nothing the guest sees)")
	}
	if len(d.SMBIOSTables().Tables) == 0 {
		for _, si := range d.SysInfo {
			if si.SMBIOS != nil {
				out = append(out, "<sysinfo type='smbios'> is kept and not given to the guest: as in libvirt, add <smbios mode='sysinfo'/> to <os> for that")
				break
			}
		}
	}
	for _, nic := range d.Devices.Interfaces {
		if nic.Source != nil && nic.Source.Network != nil {
			out = append(out, fmt.Sprintf("interface type='network' (%s): minivirt gives it its user network with NAT (10.0.2.0/24, the host's loopback at 10.0.2.2), as libvirt's default network is NAT too", nic.Source.Network.Network))
		}
	}
	return out
}
