package domain

import (
	"fmt"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// The rules of the guest's memory: <currentMemory> (the balloon's target),
// <maxMemory> with its DIMM slots and the <memory model='dimm'> devices that
// fill them, <memoryBacking> (memfd, file or anonymous; shared or private;
// huge pages, locked, preallocated) and the NUMA cells of <cpu>.

// memorySources are the kinds of memory a guest's RAM can be backed by.
var memorySources = []string{"anonymous", "memfd", "file"}

func (ck *checker) validateMemory() error {
	d := ck.d
	if c := d.CurrentMemory; c != nil {
		if c.Value > d.Memory.Value {
			return fmt.Errorf("currentMemory %d KiB: more than memory %d KiB; it is the balloon's target, at most memory", c.Value, d.Memory.Value)
		}
		if c.Value < d.Memory.Value && d.Devices.MemBalloon != nil && d.Devices.MemBalloon.Model == "none" {
			ck.refuseAtStart("currentMemory %d KiB: below memory %d KiB needs the balloon; remove <memballoon model='none'> or make them equal to start the domain", c.Value, d.Memory.Value)
		}
	}
	if m := d.MaximumMemory; m != nil {
		if m.Value < d.Memory.Value && m.Value != 0 {
			return fmt.Errorf("maxMemory %d KiB: less than memory %d KiB; it is the most the guest can grow to", m.Value, d.Memory.Value)
		}
		if m.Slots > 256 {
			return fmt.Errorf("maxMemory slots %d: must be at most 256 (the DIMM slots)", m.Slots)
		}
		if m.Slots > 0 && m.Value <= d.Memory.Value {
			return fmt.Errorf("maxMemory %d KiB: with slots it must be more than memory %d KiB, or there is nothing to plug", m.Value, d.Memory.Value)
		}
	}
	dimms := 0
	var plugged uint
	for i, m := range d.Devices.Memorydevs {
		where := fmt.Sprintf("memory device %d model %s", i, m.Model)
		if m.Model != "dimm" {
			ck.unsupported("devices", []string{"<memory model='" + m.Model + "'>"})
			continue
		}
		dimms++
		ck.unsupported(where, unhandled(&m, "Model", "Target", "Source", "Alias", "Address", "Access"))
		if d.MaximumMemory == nil {
			return fmt.Errorf("%s: needs <maxMemory slots=''> (the DIMM slots it plugs into)", where)
		}
		if m.Target == nil || m.Target.Size == nil || m.Target.Size.Value == 0 {
			return fmt.Errorf("%s: needs <target><size unit='MiB'>N</size></target>", where)
		}
		ck.unsupported(where+" target", unhandled(m.Target, "Size", "Node"))
		plugged += m.Target.Size.Value
		if s := m.Source; s != nil {
			ck.unsupported(where+" source", unhandled(s, "PageSize"))
			if p := s.PageSize; p != nil {
				if _, err := toKiB(where+" source pagesize", uint(p.Value), p.Unit); err != nil {
					return err
				}
			}
		}
		if n := m.Target.Node; n != nil && n.Value >= uint(max(len(d.NUMACells()), 1)) {
			return fmt.Errorf("%s target node %d: the domain has %d NUMA cells; give a node below that", where, n.Value, max(len(d.NUMACells()), 1))
		}
		if a := m.Address; a != nil && a.DIMM == nil {
			return fmt.Errorf("%s address: must be type='dimm'", where)
		}
		if err := oneOf(where+" access", m.Access, []string{"shared", "private"}); err != nil {
			return err
		}
	}
	if mm := d.MaximumMemory; mm != nil {
		if uint(dimms) > mm.Slots {
			return fmt.Errorf("maxMemory slots %d: the domain has %d DIMMs; give at least %d slots", mm.Slots, dimms, dimms)
		}
		if d.Memory.Value <= plugged && plugged > 0 {
			return fmt.Errorf("memory %d KiB: counts the DIMMs' %d KiB, as in libvirt, so must be more", d.Memory.Value, plugged)
		}
	}
	if b := d.MemoryBacking; b != nil {
		ck.unsupported("memoryBacking", unhandled(b, "MemoryHugePages", "MemoryNosharepages", "MemoryLocked",
			"MemorySource", "MemoryAccess", "MemoryAllocation", "MemoryDiscard"))
		if s := b.MemorySource; s != nil {
			if err := oneOf("memoryBacking source type", s.Type, memorySources); err != nil {
				return err
			}
		}
		if a := b.MemoryAccess; a != nil {
			if err := oneOf("memoryBacking access mode", a.Mode, []string{"shared", "private"}); err != nil {
				return err
			}
		}
		if a := b.MemoryAllocation; a != nil {
			if err := oneOf("memoryBacking allocation mode", a.Mode, []string{"immediate", "ondemand"}); err != nil {
				return err
			}
			if a.Threads != 0 && a.Mode != "immediate" {
				return fmt.Errorf("memoryBacking allocation threads %d: only with mode='immediate'", a.Threads)
			}
		}
		source := "anonymous"
		if b.MemorySource != nil && b.MemorySource.Type != "" {
			source = b.MemorySource.Type
		}
		if b.MemoryHugePages != nil && source == "file" {
			ck.refuseAtStart("memoryBacking hugepages with source type file: minivirt backs huge pages by memfd; use source type memfd or none to start the domain")
		}
		if b.MemoryDiscard != nil && source != "file" {
			ck.refuseAtStart("memoryBacking discard: QEMU discards only a file's memory; use source type file or remove <discard/> to start the domain")
		}
		if h := b.MemoryHugePages; h != nil {
			for _, p := range h.Hugepages {
				if p.Nodeset != "" {
					ck.unsupported("memoryBacking hugepages page", []string{"attribute nodeset"})
				}
				if _, err := toKiB("memoryBacking hugepages page size", p.Size, p.Unit); err != nil {
					return err
				}
			}
			if len(h.Hugepages) > 1 {
				ck.unsupported("memoryBacking hugepages", []string{"more than one <page>"})
			}
		}
	}
	return ck.validateNUMA()
}

func (ck *checker) validateNUMA() error {
	d := ck.d
	if d.CPU == nil || d.CPU.Numa == nil {
		return nil
	}
	n := d.CPU.Numa
	ck.unsupported("cpu numa", unhandled(n, "Cell"))
	var total uint
	owner := map[uint]int{}
	for i, cell := range n.Cell {
		where := fmt.Sprintf("cpu numa cell %d", i)
		ck.unsupported(where, unhandled(&cell, "ID", "CPUs", "Memory", "Unit", "MemAccess"))
		if cell.ID != nil && *cell.ID != uint(i) {
			return fmt.Errorf("%s id %d: cells are numbered in order from 0", where, *cell.ID)
		}
		if cell.CPUs != "" {
			cpus, err := CPUList(cell.CPUs, d.VCPU.Value)
			if err != nil {
				return fmt.Errorf("%s cpus %q: %w", where, cell.CPUs, err)
			}
			for _, c := range cpus {
				if j, ok := owner[c]; ok {
					return fmt.Errorf("%s cpus %q: CPU %d is cell %d's already", where, cell.CPUs, c, j)
				}
				owner[c] = i
			}
		}
		if cell.Memory == 0 {
			return fmt.Errorf("%s memory 0 KiB: must be more than 0", where)
		}
		if err := oneOf(where+" memAccess", cell.MemAccess, []string{"shared", "private"}); err != nil {
			return err
		}
		total += cell.Memory
	}
	return nil
}

// CPUList parses a libvirt CPU list ("0-3,5", "^2" excludes) of CPUs below
// n, in order.
func CPUList(s string, n uint) ([]uint, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("empty")
	}
	set := map[uint]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		exclude := strings.HasPrefix(part, "^")
		part = strings.TrimPrefix(part, "^")
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.ParseUint(lo, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CPU number", lo)
		}
		b := a
		if isRange {
			if b, err = strconv.ParseUint(hi, 10, 16); err != nil || b < a {
				return nil, fmt.Errorf("%q is not a CPU range", part)
			}
		}
		if b >= uint64(n) {
			return nil, fmt.Errorf("CPU %d: the domain has %d vcpus", b, n)
		}
		for c := a; c <= b; c++ {
			set[uint(c)] = !exclude
		}
	}
	var out []uint
	for c := uint(0); c < n; c++ {
		if set[c] {
			out = append(out, c)
		}
	}
	return out, nil
}

// MemoryBacking is how the guest's RAM is backed, normalised from
// <memoryBacking>, the NUMA cells' memAccess and what devices need.
type MemoryBacking struct {
	// Source is "anonymous", "memfd" or "file".
	Source string
	// Shared maps the RAM shared: vhost-user backends (virtiofsd) need it.
	Shared bool
	// HugePageKiB, when not 0, backs RAM by huge pages of this size.
	HugePageKiB uint
	Locked      bool // mlock the guest's RAM (-overcommit mem-lock=on)
	NoShare     bool // no KSM (mem-merge=off)
	Prealloc    bool // allocation mode immediate
	// PreallocThreads, when not 0, is how many threads preallocate.
	PreallocThreads uint
	Discard         bool
	// Explicit is set when the RAM needs a memory backend object at all.
	Explicit bool
}

// Backing returns how the domain's RAM is backed. Shared memory by memfd
// is chosen when a device needs it (virtiofs) and the domain names no source.
func (d *Domain) Backing() MemoryBacking {
	var mb MemoryBacking
	mb.Source = "anonymous"
	if b := d.MemoryBacking; b != nil {
		if b.MemorySource != nil && b.MemorySource.Type != "" {
			mb.Source = b.MemorySource.Type
		}
		mb.Shared = b.MemoryAccess != nil && b.MemoryAccess.Mode == "shared"
		if h := b.MemoryHugePages; h != nil {
			mb.HugePageKiB = 2048 // the host's default huge page size on x86
			if len(h.Hugepages) > 0 {
				mb.HugePageKiB, _ = toKiB("", h.Hugepages[0].Size, h.Hugepages[0].Unit)
			}
		}
		mb.Locked = b.MemoryLocked != nil
		mb.NoShare = b.MemoryNosharepages != nil
		if a := b.MemoryAllocation; a != nil && a.Mode == "immediate" {
			mb.Prealloc, mb.PreallocThreads = true, a.Threads
		}
		mb.Discard = b.MemoryDiscard != nil
	}
	if d.needsSharedMemory() {
		mb.Shared = true
		if mb.Source == "anonymous" && mb.HugePageKiB == 0 {
			mb.Source = "memfd"
		}
	}
	mb.Explicit = mb.Source != "anonymous" || mb.Shared || mb.HugePageKiB != 0 || mb.Prealloc || mb.Discard
	return mb
}

// needsSharedMemory reports whether a device of the domain reads the
// guest's RAM from another process (a virtiofs share, the supervisor's
// vhost-user NIC).
func (d *Domain) needsSharedMemory() bool {
	if d.vhostUser() {
		return true
	}
	for _, fs := range d.Devices.Filesystems {
		if fs.Driver != nil && fs.Driver.Type == "virtiofs" {
			return true
		}
	}
	return false
}

// BalloonTarget returns the balloon's target in KiB when the domain starts
// below its memory (<currentMemory>), or 0.
func (d *Domain) BalloonTarget() uint {
	if c := d.CurrentMemory; c != nil && c.Value < d.Memory.Value {
		return c.Value
	}
	return 0
}

// DIMM is one <memory model='dimm'> device, normalised.
type DIMM struct {
	SizeMiB uint64
	Node    uint
	Slot    *uint
	Addr    *uint64
	// Shared and HugePageKiB are its <access mode> and <source><pagesize>,
	// as the guest's RAM has them when not set.
	Shared      *bool
	HugePageKiB uint
}

// DIMMs returns the domain's DIMMs.
func (d *Domain) DIMMs() []DIMM {
	var out []DIMM
	for _, m := range d.Devices.Memorydevs {
		if m.Model != "dimm" || m.Target == nil || m.Target.Size == nil {
			continue
		}
		dm := DIMM{SizeMiB: uint64(m.Target.Size.Value) / 1024}
		if m.Target.Node != nil {
			dm.Node = m.Target.Node.Value
		}
		if a := m.Address; a != nil && a.DIMM != nil {
			dm.Slot, dm.Addr = a.DIMM.Slot, a.DIMM.Base
		}
		if m.Access != "" {
			shared := m.Access == "shared"
			dm.Shared = &shared
		}
		if s := m.Source; s != nil && s.PageSize != nil {
			dm.HugePageKiB, _ = toKiB("", uint(s.PageSize.Value), s.PageSize.Unit)
		}
		out = append(out, dm)
	}
	return out
}

// NUMACells returns the NUMA cells of <cpu><numa>.
func (d *Domain) NUMACells() []libvirtxml.DomainCell {
	if d.CPU == nil || d.CPU.Numa == nil {
		return nil
	}
	return d.CPU.Numa.Cell
}

// normaliseMemory writes every size in KiB, as libvirt does.
func (d *Domain) normaliseMemory() error {
	var err error
	if m := d.MaximumMemory; m != nil {
		if m.Value, err = toKiB("maxMemory", m.Value, m.Unit); err != nil {
			return err
		}
		m.Unit = "KiB"
	}
	for i := range d.Devices.Memorydevs {
		m := &d.Devices.Memorydevs[i]
		if m.Target != nil && m.Target.Size != nil {
			if m.Target.Size.Value, err = toKiB("memory device target size", m.Target.Size.Value, m.Target.Size.Unit); err != nil {
				return err
			}
			m.Target.Size.Unit = "KiB"
		}
	}
	if d.CPU != nil && d.CPU.Numa != nil && len(d.CPU.Numa.Cell) > 0 {
		var total uint
		for i := range d.CPU.Numa.Cell {
			c := &d.CPU.Numa.Cell[i]
			if c.Memory, err = toKiB("cpu numa cell memory", c.Memory, c.Unit); err != nil {
				return err
			}
			c.Unit = "KiB"
			total += c.Memory
		}
		// As libvirt: the NUMA cells are the initial memory, and <memory>
		// is that and the DIMMs.
		d.Memory.Value = total + d.dimmKiB()
	}
	return nil
}

// dimmKiB is the memory the domain's DIMMs add.
func (d *Domain) dimmKiB() uint {
	var n uint
	for _, m := range d.Devices.Memorydevs {
		if m.Target != nil && m.Target.Size != nil {
			n += m.Target.Size.Value
		}
	}
	return n
}

// InitialMemoryKiB is the guest's memory at boot, without its DIMMs: QEMU's
// -m size. As in libvirt, <memory> counts the DIMMs.
func (d *Domain) InitialMemoryKiB() uint {
	if d.dimmKiB() >= d.Memory.Value {
		return d.Memory.Value
	}
	return d.Memory.Value - d.dimmKiB()
}
