package launcher

import (
	"fmt"
	"strings"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
)

// The guest's memory (size, slots, backend, NUMA nodes, DIMMs, balloon),
// its helper threads, what its firmware tables say (SMBIOS, fw_cfg, VM
// generation id) and its watchdog.

// mib rounds KiB up to whole MiB: QEMU wants page-aligned sizes, and
// libvirt aligns x86 guests' memory to 1 MiB.
func mib(kib uint) uint64 { return (uint64(kib) + 1023) / 1024 }

// memory writes -m and the memory backends: one for the guest's RAM when
// <memoryBacking> asks for more than QEMU's default, one per NUMA cell, and
// one per DIMM.
func (b *builder) memory() error {
	d := b.d
	mb := d.Backing()
	var cells []uint64
	if d.CPU != nil && d.CPU.Numa != nil {
		for _, c := range d.CPU.Numa.Cell {
			cells = append(cells, mib(c.Memory))
		}
	}
	initial := mib(d.InitialMemoryKiB())
	if len(cells) > 0 {
		initial = 0
		for _, c := range cells {
			initial += c
		}
	}
	m := fmt.Sprint(initial)
	if mm := d.MaximumMemory; mm != nil && mm.Value != 0 {
		m = fmt.Sprintf("size=%dM,slots=%d,maxmem=%dM", initial, mm.Slots, mib(mm.Value))
	}
	b.add("-m", m)
	if len(cells) == 0 && mb.Explicit {
		b.add("-object", b.backend(ramID, initial, mb, mb.Shared)) // -machine memory-backend names it
	}
	for i, c := range d.NUMACells() {
		shared := mb.Shared
		if c.MemAccess != "" {
			shared = c.MemAccess == "shared"
		}
		id := fmt.Sprintf("ram-node%d", i)
		b.add("-object", b.backend(id, cells[i], mb, shared))
		node := fmt.Sprintf("node,nodeid=%d,memdev=%s", i, id)
		if c.CPUs != "" {
			list, _ := domain.CPUList(c.CPUs, d.VCPU.Value)
			for _, r := range ranges(list) {
				node += ",cpus=" + r
			}
		}
		b.add("-numa", node)
	}
	for i, dimm := range d.DIMMs() {
		id := fmt.Sprintf("memdimm%d", i)
		dmb, shared := mb, mb.Shared
		if dimm.Shared != nil {
			shared = *dimm.Shared
		}
		if dimm.HugePageKiB != 0 {
			dmb.HugePageKiB = dimm.HugePageKiB
		}
		b.add("-object", b.backend(id, dimm.SizeMiB, dmb, shared))
		dev := fmt.Sprintf("pc-dimm,node=%d,memdev=%s,id=dimm%d", dimm.Node, id, i)
		if dimm.Slot != nil {
			dev += fmt.Sprintf(",slot=%d", *dimm.Slot)
		}
		if dimm.Addr != nil {
			dev += fmt.Sprintf(",addr=%#x", *dimm.Addr)
		}
		b.add("-device", dev)
	}
	if mb.Locked {
		b.add("-overcommit", "mem-lock=on")
	}
	return nil
}

// ramID is the id of the guest RAM's backend: QEMU's own name for it, so
// that a saved guest restores whichever way its RAM is backed.
const ramID = "pc.ram"

// memoryMachineOptions are the -machine options of the guest's RAM.
func memoryMachineOptions(d *domain.Domain) string {
	mb := d.Backing()
	s := ""
	if len(d.NUMACells()) == 0 && mb.Explicit {
		s += ",memory-backend=" + ramID
	}
	if mb.NoShare {
		s += ",mem-merge=off"
	}
	return s
}

// backend is a memory backend object of size MiB as <memoryBacking> says.
func (b *builder) backend(id string, size uint64, mb domain.MemoryBacking, shared bool) string {
	var s string
	switch {
	case mb.Source == "file":
		// QEMU makes an unlinked file in the directory, as libvirt's
		// memory_backing_dir.
		s = fmt.Sprintf("memory-backend-file,id=%s,mem-path=%s", id, escapeOpt(b.env.RunDir))
	case mb.Source == "memfd" || mb.HugePageKiB != 0:
		s = fmt.Sprintf("memory-backend-memfd,id=%s", id)
		if mb.HugePageKiB != 0 {
			s += fmt.Sprintf(",hugetlb=on,hugetlbsize=%dK", mb.HugePageKiB)
		}
	default:
		s = fmt.Sprintf("memory-backend-ram,id=%s", id)
	}
	s += fmt.Sprintf(",size=%dM", size)
	if shared {
		s += ",share=on"
	}
	if mb.Prealloc {
		s += ",prealloc=on"
		if mb.PreallocThreads != 0 {
			s += fmt.Sprintf(",prealloc-threads=%d", mb.PreallocThreads)
		}
	}
	if mb.Discard && mb.Source == "file" {
		s += ",discard-data=on"
	}
	return s
}

// ranges writes sorted CPU numbers as QEMU's ranges: 0-3, 5.
func ranges(cpus []uint) []string {
	var out []string
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if i == j {
			out = append(out, fmt.Sprint(cpus[i]))
		} else {
			out = append(out, fmt.Sprintf("%d-%d", cpus[i], cpus[j]))
		}
		i = j + 1
	}
	return out
}

// platform writes the iothreads, SMBIOS tables, fw_cfg entries, VM
// generation id and watchdog.
func (b *builder) platform() error {
	d := b.d
	for _, id := range d.IOThreadIDList() {
		b.add("-object", fmt.Sprintf("iothread,id=iothread%d", id))
	}
	tables := d.SMBIOSTables()
	for _, typ := range []int{0, 1, 2, 3} {
		fields := tables.Tables[typ]
		if len(fields) == 0 {
			continue
		}
		s := fmt.Sprintf("type=%d", typ)
		for _, f := range fields {
			s += "," + f[0] + "=" + escapeOpt(f[1])
		}
		b.add("-smbios", s)
	}
	for _, o := range tables.OEMStrings {
		b.add("-smbios", "type=11,value="+escapeOpt(o))
	}
	for _, e := range d.FWCfg() {
		if e.File != "" {
			b.add("-fw_cfg", "name="+e.Name+",file="+escapeOpt(e.File))
		} else {
			b.add("-fw_cfg", "name="+e.Name+",string="+escapeOpt(e.Value))
		}
	}
	if g := d.GenID; g != nil {
		guid := g.Value
		if guid == "" {
			guid = "auto" // as libvirt: a new generation at each start
		}
		b.add("-device", "vmgenid,guid="+guid+",id=vmgenid0")
	}
	if a := d.WatchdogAction(); a != "" {
		for i, w := range d.Devices.Watchdogs {
			switch w.Model {
			case "i6300esb":
				b.add("-device", fmt.Sprintf("i6300esb,id=watchdog%d", i)+domain.PCIAddr(w.Address))
			case "ib700":
				b.add("-device", fmt.Sprintf("ib700,id=watchdog%d", i))
			case "itco":
				b.add("-global", "ICH9-LPC.noreboot=off")
			}
		}
		b.add("-action", "watchdog="+a)
	}
	return nil
}

// rtcBase is QEMU's -rtc base= for the domain's clock offset.
func rtcBase(offset string, start uint) string {
	switch offset {
	case "", "utc":
		return "utc"
	case "absolute":
		return time.Unix(int64(start), 0).UTC().Format("2006-01-02T15:04:05")
	}
	return strings.ToLower(offset)
}
