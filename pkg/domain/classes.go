package domain

import (
	"fmt"
	"sort"
	"strings"
)

// Class is what minivirt does with an element of libvirt's domain XML.
type Class string

// The three classes. Every element is in one; none is dropped or misread.
const (
	// ActedOn: minivirt gives the guest what the element says.
	ActedOn Class = "acted on"
	// Kept: stored and written back, with a warning at define; it cannot
	// change what the guest sees or what the host exposes.
	Kept Class = "kept, with a warning"
	// Refused: define fails with one line that names it.
	Refused Class = "refused"
)

// Element is one row of the table in the README.
type Element struct {
	Name  string
	Class Class
	How   string
}

// Elements is the table of libvirt domain elements a user will have, and
// what minivirt does with each. Validate and Warnings implement it; a test
// holds the README's table to it.
var Elements = []Element{
	{"name, uuid, title", ActedOn, "name and uuid given to QEMU (-name, -uuid); title kept"},
	{"memory, currentMemory", ActedOn, "-m; currentMemory must equal memory (no ballooning down)"},
	{"vcpu (current, placement='static')", ActedOn, "-smp current,maxcpus=N; placement='auto' refused"},
	{"os type (arch x86_64, machine)", ActedOn, "-machine; other architectures refused"},
	{"os kernel, initrd, cmdline", ActedOn, "direct kernel boot"},
	{"os boot dev, bootmenu", ActedOn, "-boot order=..., menu=on"},
	{"boot order on a disk or interface", ActedOn, "bootindex"},
	{"os firmware='efi', loader, nvram", ActedOn, "OVMF from Debian's ovmf as pflash; the per-domain NVRAM copy lives in the state directory; Secure Boot refused"},
	{"features acpi, apic, pae, vmport, smm", ActedOn, "ACPI is always on (without <acpi/> refused); vmport and smm as -machine options; every other feature refused"},
	{"cpu mode, model, topology, feature", ActedOn, "-cpu (host or max under TCG), sockets/dies/cores/threads, +feature/-feature; numa, cache refused"},
	{"clock offset, timer rtc/pit/hpet/kvmclock", ActedOn, "-rtc base=,driftfix=; hpet present='no' turns HPET off; other timers refused"},
	{"pm suspend-to-mem, suspend-to-disk", ActedOn, "disable_s3/disable_s4 on the machine's power-management device"},
	{"on_poweroff, on_reboot, on_crash", ActedOn, "destroy, restart, preserve; coredump-* and rename-restart refused"},
	{"disk type file and block, device disk/cdrom", ActedOn, "virtio-blk, SATA (AHCI) or IDE; network, volume and nvme sources refused"},
	{"disk driver type, cache, io, discard, detect_zeroes, error_policy", ActedOn, "-blockdev/-drive options of the same names"},
	{"disk readonly, shareable, serial, transient", ActedOn, "read-only, share-rw, serial=; transient: a throwaway overlay (snapshot=on), the image untouched"},
	{"interface type='user' (mac, model, boot, link up, portForward tcp)", ActedOn, "QEMU's user network, portForward as hostfwd; other interface types refused"},
	{"vmchannel (minivirt's metadata, or <interface type='vmchannel'>)", ActedOn, "one host accept per guest connection"},
	{"forward (minivirt's metadata)", ActedOn, "host TCP address or Unix socket to a guest port, one guest connection per host connection"},
	{"channel unix guestfwd", ActedOn, "a vmchannel"},
	{"channel unix virtio (source path optional)", ActedOn, "virtserialport; without a path minivirt binds one in the run directory and status shows it"},
	{"serial, console: pty, file, unix, null; log file", ActedOn, "the first is the console minivirt logs and serves; target type='virtio' gives the guest hvc0"},
	{"controller usb, pci (pcie-root-port), virtio-serial, sata, ide", ActedOn, "the matching QEMU device; scsi and others refused"},
	{"memballoon virtio, rng virtio, panic", ActedOn, "virtio-balloon, virtio-rng (random or builtin backend), pvpanic"},
	{"qemu:commandline", ActedOn, "arguments and environment passed to QEMU; options minivirt passes itself refused; status says tainted"},
	{"description, metadata of other applications", Kept, "stored and written back as given"},
	{"video, input, sound", ActedOn, "the guest gets the device (VGA, virtio-vga, QXL, ...; PS/2, USB or virtio input; HDA, AC97, ES1370 with no host audio); nobody sees or hears it: QEMU runs headless"},
	{"graphics, audio, redirdev type='spicevmc'", Kept, "not served: minivirt runs QEMU headless (-display none) and opens no VNC or SPICE port; said at define"},
	{"alias (user aliases)", Kept, "a name for management tools; the guest never sees it"},
	{"seclabel type='none'", Kept, "minivirt has no security driver; other seclabels refused"},
	{"address type pci (root bus), type drive", ActedOn, "PCI slot and function as addr=; a drive address must agree with where the target name puts the disk"},
	{"vcpu cpuset", Kept, "minivirt does not pin host CPUs; the guest sees the same CPUs either way"},
	{"address of other types or buses (ccw, usb, isa, a PCI bridge)", Refused, "named at define; remove the address"},
	{"hostdev, filesystem, tpm, vsock, smartcard, parallel, redirdev, watchdog, shmem, iommu, memory devices", Refused, "named at define"},
	{"memtune, memoryBacking, cputune, numatune, blkiotune, iothreads, sysinfo, resource, genid, maxMemory", Refused, "named at define"},
	{"any element or attribute libvirtxml does not know, or a second <name>", Refused, "named at define: it would be lost"},
}

// Warnings names what the definition holds that minivirt keeps but does
// not act on; define says each out loud.
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
	if d.VCPU.CPUSet != "" {
		kept = append(kept, "<vcpu cpuset> (minivirt does not pin host CPUs)")
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
	return out
}
