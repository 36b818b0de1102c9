package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"
)

// Descriptor flags (virtio 1.x, 2.7.5).
const (
	descNext     = 1
	descWrite    = 2
	descIndirect = 4
)

// Ring flags.
const (
	usedNoNotify     = 1 // in the used ring: the device asks for no kicks
	availNoInterrupt = 1 // in the available ring: the driver asks for no interrupts
)

// maxQueueSize is the largest split virtqueue (virtio 1.x: 32768).
const maxQueueSize = 32768

// maxChain bounds a chain's descriptors: Linux's driver uses at most
// MAX_SKB_FRAGS+2 (19, or 47 where MAX_SKB_FRAGS is raised) without
// indirect tables, and a bound below the ring's size keeps a guest's
// zero-length loops from costing a ring's square of reads per pass.
const maxChain = 256

// errChain is a descriptor chain the guest broke: an address outside its
// memory, a loop, an indirect table this back-end did not offer, a
// descriptor of the wrong direction or a frame over MaxFrame.
var errChain = errors.New("malformed descriptor chain")

// vring is one split virtqueue in guest memory: the descriptor table, the
// available ring the driver writes and the used ring the device writes.
// One goroutine uses it at a time.
type vring struct {
	mem   *memory
	log   *dirtyLog // nil unless the front-end logs writes (a save under way)
	num   uint16
	desc  []byte // num × 16
	avail []byte // flags, idx, ring[num]
	used  []byte // flags, idx, ring[num] of (id, len)
	// usedGPA is the used ring's guest address, where logged writes go.
	usedGPA   uint64
	lastAvail uint16 // the next available entry to take
	usedIdx   uint16 // the next used entry to fill
	usedFlags uint16
}

// addresses is what SET_VRING_ADDR says, in QEMU's address space but for
// log, a guest physical address.
type addresses struct {
	flags                  uint32
	desc, used, avail, log uint64
}

const vringFlagLog = 1 // SET_VRING_ADDR: log writes to the used ring

// newVring maps a ring of num entries at a in mem, starting at the
// available index base; its used index is what the used ring says (what
// the front-end kept across a stop, or a migration).
func newVring(mem *memory, num uint16, a addresses, base uint16) (*vring, error) {
	if num == 0 || num&(num-1) != 0 {
		return nil, fmt.Errorf("queue size %d is not a power of two", num)
	}
	n := uint64(num)
	desc, ok1 := mem.user(a.desc, 16*n)
	avail, ok2 := mem.user(a.avail, 4+2*n+2)
	used, ok3 := mem.user(a.used, 4+8*n+2)
	if !ok1 || !ok2 || !ok3 {
		return nil, fmt.Errorf("ring of %d entries outside guest memory (desc %#x, avail %#x, used %#x)", num, a.desc, a.avail, a.used)
	}
	if uintptr(unsafe.Pointer(&avail[0]))%4 != 0 || uintptr(unsafe.Pointer(&used[0]))%4 != 0 {
		return nil, fmt.Errorf("ring not aligned (avail %#x, used %#x)", a.avail, a.used)
	}
	v := &vring{mem: mem, num: num, desc: desc, avail: avail, used: used, lastAvail: base}
	if a.flags&vringFlagLog != 0 {
		v.usedGPA = a.log
	} else {
		v.usedGPA = ^uint64(0)
	}
	v.usedIdx = uint16(atomic.LoadUint32(v.word(v.used)) >> 16)
	return v, nil
}

// word is the ring's first four bytes (flags and idx), read and written
// whole and atomically: the other side is another process.
func (v *vring) word(b []byte) *uint32 { return (*uint32)(unsafe.Pointer(&b[0])) }

func (v *vring) availIdx() uint16 { return uint16(atomic.LoadUint32(v.word(v.avail)) >> 16) }

// pending reports whether the driver made entries available not yet taken.
func (v *vring) pending() bool { return v.availIdx() != v.lastAvail }

// pop takes the next available chain's head, if any. An available index
// more than the ring's size ahead of the device is the driver's error (it
// cannot have made more chains available than the ring holds): the head
// returned is then past the ring, which stops the queue, as Linux's vhost
// does, instead of taking the same entries over and over.
func (v *vring) pop() (uint16, bool, error) {
	avail := v.availIdx()
	if avail == v.lastAvail {
		return 0, false, nil
	}
	if ahead := avail - v.lastAvail; ahead > v.num {
		return v.num, true, fmt.Errorf("%w: available index %d is %d entries ahead of %d in a ring of %d", errChain, avail, ahead, v.lastAvail, v.num)
	}
	i := 4 + 2*uint64(v.lastAvail%v.num)
	head := binary.LittleEndian.Uint16(v.avail[i:])
	v.lastAvail++
	if head >= v.num {
		return head, true, fmt.Errorf("%w: head %d of a ring of %d", errChain, head, v.num)
	}
	return head, true, nil
}

// unpop gives back the last n chains taken (a frame they could not hold).
func (v *vring) unpop(n uint16) { v.lastAvail -= n }

// descriptor is one descriptor, copied out of guest memory once.
type descriptor struct {
	addr  uint64
	len   uint32
	flags uint16
	next  uint16
}

func (v *vring) descriptor(i uint16) descriptor {
	b := v.desc[16*uint64(i):]
	return descriptor{
		addr:  binary.LittleEndian.Uint64(b),
		len:   binary.LittleEndian.Uint32(b[8:]),
		flags: binary.LittleEndian.Uint16(b[12:]),
		next:  binary.LittleEndian.Uint16(b[14:]),
	}
}

// walk calls fn with the guest memory of each descriptor of the chain at
// head, in order, refusing the chain (errChain) before fn sees a buffer
// outside guest memory, and after num descriptors (a loop).
func (v *vring) walk(head uint16, fn func(buf []byte, gpa uint64, writable bool) error) error {
	i := head
	for count := 0; ; count++ {
		if count == min(int(v.num), maxChain) || i >= v.num {
			return fmt.Errorf("%w: chain at %d longer than %d descriptors, its ring, or past it", errChain, head, min(int(v.num), maxChain))
		}
		d := v.descriptor(i)
		if d.flags&descIndirect != 0 {
			return fmt.Errorf("%w: indirect descriptor", errChain)
		}
		buf, ok := v.mem.guest(d.addr, uint64(d.len))
		if !ok {
			return fmt.Errorf("%w: %d bytes at %#x outside guest memory", errChain, d.len, d.addr)
		}
		if err := fn(buf, d.addr, d.flags&descWrite != 0); err != nil {
			return err
		}
		if d.flags&descNext == 0 {
			return nil
		}
		i = d.next
	}
}

// push fills the next used entry: chain head, n bytes written. The driver
// sees it at publish.
func (v *vring) push(head uint16, n uint32) {
	i := 4 + 8*uint64(v.usedIdx%v.num)
	binary.LittleEndian.PutUint32(v.used[i:], uint32(head))
	binary.LittleEndian.PutUint32(v.used[i+4:], n)
	if v.log != nil && v.usedGPA != ^uint64(0) {
		v.log.mark(v.usedGPA+i, 8)
	}
	v.usedIdx++
}

// publish makes the pushed entries the driver's: the used index is stored
// after the entries (an atomic store orders them).
func (v *vring) publish() {
	atomic.StoreUint32(v.word(v.used), uint32(v.usedIdx)<<16|uint32(v.usedFlags))
	if v.log != nil && v.usedGPA != ^uint64(0) {
		v.log.mark(v.usedGPA, 4)
	}
}

// notifications asks the driver for kicks (on) or for none (off), which
// spares an emulated guest an exit per buffer while the device is busy.
func (v *vring) notifications(on bool) {
	if on {
		v.usedFlags &^= usedNoNotify
	} else {
		v.usedFlags |= usedNoNotify
	}
	v.publish()
}

// wantsInterrupt reports whether the driver wants to hear of used entries.
func (v *vring) wantsInterrupt() bool {
	return uint16(atomic.LoadUint32(v.word(v.avail)))&availNoInterrupt == 0
}
