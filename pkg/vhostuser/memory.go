package vhostuser

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// region is one range of guest RAM QEMU described, mapped here.
type region struct {
	gpa  uint64 // guest physical address of its first byte
	uva  uint64 // QEMU's own address of it (what vring addresses use)
	mmap []byte // the whole mapping, from the file's offset 0
	data []byte // the region itself, len(data) its size
}

// memory is the guest RAM QEMU shared: a set of regions.
type memory struct {
	regions []region
}

// mapMemory maps the regions of a SET_MEM_TABLE payload, one descriptor
// each; it closes the descriptors, mapped or not.
func mapMemory(payload []byte, fds []int) (*memory, error) {
	defer func() {
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	if len(payload) < 8 {
		return nil, fmt.Errorf("memory table of %d bytes", len(payload))
	}
	n := int(binary.LittleEndian.Uint32(payload))
	if n == 0 || n > maxRegions || len(payload) < 8+32*n || len(fds) != n {
		return nil, fmt.Errorf("memory table of %d regions with %d descriptors", n, len(fds))
	}
	m := &memory{}
	for i := range n {
		r := payload[8+32*i:]
		gpa := binary.LittleEndian.Uint64(r[0:])
		size := binary.LittleEndian.Uint64(r[8:])
		uva := binary.LittleEndian.Uint64(r[16:])
		off := binary.LittleEndian.Uint64(r[24:])
		if size == 0 || size > 1<<46 || off > 1<<46 || gpa+size < gpa || uva+size < uva {
			m.unmap()
			return nil, fmt.Errorf("memory region %d: %d bytes at %#x, offset %d", i, size, gpa, off)
		}
		// A mapping past the file's end would fault (SIGBUS, fatal) when
		// touched: the file must hold the whole region.
		var st unix.Stat_t
		if err := unix.Fstat(fds[i], &st); err != nil || st.Size < 0 || uint64(st.Size) < size+off {
			m.unmap()
			return nil, fmt.Errorf("memory region %d: %d bytes at offset %d, past the end of its file (%d bytes, %v)", i, size, off, st.Size, err)
		}
		b, err := unix.Mmap(fds[i], 0, int(size+off), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			m.unmap()
			return nil, fmt.Errorf("memory region %d: mmap %d bytes: %w", i, size+off, err)
		}
		m.regions = append(m.regions, region{gpa: gpa, uva: uva, mmap: b, data: b[off:]})
	}
	return m, nil
}

func (m *memory) unmap() {
	if m == nil {
		return
	}
	for _, r := range m.regions {
		unix.Munmap(r.mmap)
	}
	m.regions = nil
}

// guest returns the n bytes of guest RAM at guest physical address gpa,
// when one region holds them all.
func (m *memory) guest(gpa, n uint64) ([]byte, bool) {
	return m.find(gpa, n, func(r *region) uint64 { return r.gpa })
}

// user is guest for an address in QEMU's own address space (the vring
// addresses of SET_VRING_ADDR).
func (m *memory) user(uva, n uint64) ([]byte, bool) {
	return m.find(uva, n, func(r *region) uint64 { return r.uva })
}

// find returns the n bytes at addr of the region that holds them all,
// addresses being those start gives each region; the checks cannot
// overflow, whatever addr and n the guest wrote.
func (m *memory) find(addr, n uint64, start func(*region) uint64) ([]byte, bool) {
	for i := range m.regions {
		r := &m.regions[i]
		size := uint64(len(r.data))
		if s := start(r); addr >= s && addr-s <= size && n <= size-(addr-s) {
			o := addr - s
			return r.data[o : o+n : o+n], true
		}
	}
	return nil, false
}

// dirtyLog is the front-end's bitmap of guest pages written, one bit per
// 4 KiB page, which it reads while it migrates (saves) the guest.
type dirtyLog struct {
	mmap []byte
}

const logPage = 4096

func mapLog(payload []byte, fd int) (*dirtyLog, error) {
	defer unix.Close(fd)
	if len(payload) < 16 {
		return nil, fmt.Errorf("log of %d bytes", len(payload))
	}
	size := binary.LittleEndian.Uint64(payload)
	off := binary.LittleEndian.Uint64(payload[8:])
	if size == 0 || size > 1<<40 || off > 1<<40 || off%uint64(unix.Getpagesize()) != 0 {
		return nil, fmt.Errorf("log of %d bytes at offset %d", size, off)
	}
	b, err := unix.Mmap(fd, int64(off), int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("log: mmap %d bytes: %w", size, err)
	}
	return &dirtyLog{mmap: b}, nil
}

func (l *dirtyLog) unmap() {
	if l != nil {
		unix.Munmap(l.mmap)
	}
}

// mark records the n bytes at guest physical address gpa as written.
func (l *dirtyLog) mark(gpa, n uint64) {
	if l == nil || n == 0 {
		return
	}
	for page := gpa / logPage; page <= (gpa+n-1)/logPage; page++ {
		word := page / 32 * 4
		if word+4 > uint64(len(l.mmap)) {
			return
		}
		atomic.OrUint32((*uint32)(unsafe.Pointer(&l.mmap[word])), 1<<(page%32))
	}
}
