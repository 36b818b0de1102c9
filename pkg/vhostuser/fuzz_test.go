package vhostuser

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The guest memory FuzzVring lays its rings in: one region of fuzzSize
// bytes at guest physical 0, between two PROT_NONE guard pages, so that a
// read or write past it faults instead of passing unseen.
const (
	fuzzSize  = 64 << 10
	fuzzUVA   = 0x7f0000000000 // the front-end's address of guest physical 0
	fuzzAvail = 0x1000
	fuzzUsed  = 0x2000
	fuzzBufs  = 0x3000
	fuzzMaxQ  = 64 // the largest queue the input lays out (1 << 6)
)

var fuzzMem = sync.OnceValue(func() []byte {
	page := unix.Getpagesize()
	all, err := unix.Mmap(-1, 0, fuzzSize+2*page, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		panic(err)
	}
	mid := all[page : page+fuzzSize : page+fuzzSize]
	if err := unix.Mprotect(mid, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		panic(err)
	}
	return mid
})

// fuzzLink is the link of FuzzVring: it checks what it is given.
type fuzzLink struct {
	t         *testing.T
	delivered int
}

func (l *fuzzLink) Admit(head []byte) bool {
	if len(head) > AdmitPrefix {
		l.t.Fatalf("Admit saw %d bytes", len(head))
	}
	return true
}

func (l *fuzzLink) Deliver(frame []byte) {
	if len(frame) > MaxFrame || len(frame) < 14 {
		l.t.Fatalf("a frame of %d bytes delivered", len(frame))
	}
	l.delivered++
}

func (l *fuzzLink) Next(context.Context, bool) (Frame, bool) { return Frame{}, false }

// fuzzInput is FuzzVring's input, laid out: a header, the available
// ring's entries, the descriptor table, then bytes for the buffers and,
// after a 2-byte length, the frame the receive queue is given.
type fuzzInput struct {
	order     byte   // the queue holds 1 << (order % 7) entries
	flags     byte   // fuzzMergeable, fuzzOffloads, fuzzTSO, fuzzPartial, fuzzLog
	base      uint16 // the device's first available entry (SET_VRING_BASE)
	availIdx  uint16 // the driver's available index
	usedIdx   uint16 // the used index the ring holds
	mss       uint16 // the receive frame's MSS
	heads     []uint16
	descs     []descriptor
	buffers   []byte
	rxFrame   []byte
	rxHeaders bool // prefix rxFrame with an Ethernet, IPv4 and TCP header
}

const (
	fuzzMergeable = 1 << iota
	fuzzOffloads
	fuzzTSO
	fuzzPartial
	fuzzLog
	fuzzTCP
)

func (in fuzzInput) encode() []byte {
	b := []byte{in.order, in.flags}
	b = binary.LittleEndian.AppendUint16(b, in.base)
	b = binary.LittleEndian.AppendUint16(b, in.availIdx)
	b = binary.LittleEndian.AppendUint16(b, in.usedIdx)
	b = binary.LittleEndian.AppendUint16(b, in.mss)
	num := 1 << (in.order % 7)
	for i := range num {
		var h uint16
		if i < len(in.heads) {
			h = in.heads[i]
		}
		b = binary.LittleEndian.AppendUint16(b, h)
	}
	for i := range num {
		var d descriptor
		if i < len(in.descs) {
			d = in.descs[i]
		}
		b = binary.LittleEndian.AppendUint64(b, d.addr)
		b = binary.LittleEndian.AppendUint32(b, d.len)
		b = binary.LittleEndian.AppendUint16(b, d.flags)
		b = binary.LittleEndian.AppendUint16(b, d.next)
	}
	b = binary.LittleEndian.AppendUint16(b, uint16(len(in.buffers)))
	b = append(b, in.buffers...)
	return append(b, in.rxFrame...)
}

// FuzzVring: whatever a guest writes in its descriptor table, available
// ring and buffers, the transmit queue's drain and the receive queue's put
// touch nothing outside guest memory (guard pages around it fault), never
// panic, deliver no frame over MaxFrame, and complete no more chains than
// the guest made available nor more than the ring holds.
func FuzzVring(f *testing.F) {
	eth := make([]byte, 12+60)
	binary.BigEndian.PutUint16(eth[12+12:], 0x0800)
	seeds := []fuzzInput{
		{order: 2, availIdx: 1, heads: []uint16{0}, descs: []descriptor{{addr: fuzzBufs, len: 72}}, buffers: eth},
		{order: 2, availIdx: 2, heads: []uint16{0, 1}, buffers: eth, descs: []descriptor{
			{addr: fuzzBufs, len: 20, flags: descNext, next: 1}, {addr: fuzzBufs + 20, len: 52},
		}},
		{order: 3, base: 65535, availIdx: 3, heads: []uint16{0, 0, 0, 1}, descs: []descriptor{
			{addr: fuzzBufs, len: 30, flags: descNext, next: 1}, {addr: fuzzBufs, len: 30, flags: descNext, next: 0},
		}},
		{order: 1, availIdx: 1, heads: []uint16{7}},
		{order: 1, availIdx: 2, heads: []uint16{0, 1}, descs: []descriptor{{addr: fuzzSize - 4, len: 8}, {addr: 1 << 63, len: 1, flags: descIndirect}}},
		{order: 6, availIdx: 1, heads: []uint16{0}, descs: []descriptor{
			{addr: 0, len: fuzzSize, flags: descNext, next: 1}, {addr: 0, len: fuzzSize, flags: descNext, next: 2}, {addr: 0, len: 12},
		}},
		{order: 2, availIdx: 1000, heads: []uint16{0, 1, 2, 3}, descs: []descriptor{
			{addr: fuzzBufs, len: 100, flags: descWrite}, {addr: fuzzBufs + 100, len: 100, flags: descWrite},
			{addr: fuzzBufs + 200, len: 100, flags: descWrite}, {addr: fuzzBufs + 300, len: 100, flags: descWrite},
		}},
		{order: 3, flags: fuzzMergeable | fuzzPartial | fuzzTCP, mss: 100, availIdx: 8, heads: []uint16{0, 1, 2, 3, 4, 5, 6, 7},
			rxFrame: make([]byte, 700), descs: []descriptor{
				{addr: fuzzBufs, len: 5, flags: descWrite | descNext, next: 1}, {addr: fuzzBufs + 5, len: 3, flags: descWrite},
				{addr: fuzzBufs + 8, len: 200, flags: descWrite}, {addr: fuzzBufs + 208, len: 200, flags: descWrite},
				{addr: fuzzBufs + 408, len: 200, flags: descWrite}, {addr: fuzzBufs + 608, len: 200, flags: descWrite},
				{addr: fuzzBufs + 808, len: 200, flags: descWrite}, {addr: fuzzBufs + 1008, len: 200, flags: descWrite},
			}},
		{order: 2, flags: fuzzMergeable | fuzzOffloads | fuzzTSO | fuzzPartial | fuzzLog | fuzzTCP, mss: 536, availIdx: 4,
			heads: []uint16{0, 1, 2, 3}, rxFrame: make([]byte, 3000), descs: []descriptor{
				{addr: fuzzBufs, len: 4096, flags: descWrite}, {addr: fuzzBufs + 4096, len: 4096, flags: descWrite},
				{addr: 0, len: fuzzSize, flags: descWrite}, {addr: 5, len: 7, flags: descWrite},
			}},
	}
	for _, s := range seeds {
		f.Add(s.encode())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzVring(t, data)
	})
}

func fuzzVring(t *testing.T, data []byte) {
	if len(data) < 10 {
		return
	}
	order, flags := data[0], data[1]
	base := binary.LittleEndian.Uint16(data[2:])
	availIdx := binary.LittleEndian.Uint16(data[4:])
	usedIdx := binary.LittleEndian.Uint16(data[6:])
	mss := binary.LittleEndian.Uint16(data[8:])
	data = data[10:]
	num := uint16(1) << (order % 7)
	n := int(num)
	if len(data) < 2*n+16*n+2 {
		return
	}
	mem := fuzzMem()
	clear(mem)
	copy(mem[fuzzAvail+4:], data[:2*n])
	copy(mem[0:], data[2*n:18*n])
	data = data[18*n:]
	nbuf := min(int(binary.LittleEndian.Uint16(data)), len(data)-2)
	copy(mem[fuzzBufs:], data[2:2+nbuf])
	rxFrame := data[2+nbuf:]
	binary.LittleEndian.PutUint32(mem[fuzzAvail:], uint32(availIdx)<<16)
	binary.LittleEndian.PutUint32(mem[fuzzUsed:], uint32(usedIdx)<<16)

	m := &memory{regions: []region{{gpa: 0, uva: fuzzUVA, data: mem}}}
	a := addresses{desc: fuzzUVA, avail: fuzzUVA + fuzzAvail, used: fuzzUVA + fuzzUsed}
	var features uint64 = fVersion1
	if flags&fuzzMergeable != 0 {
		features |= netFMrgRxbuf
	}
	if flags&fuzzOffloads != 0 {
		features |= netFCsum | netFGuestCsum | netFHostTSO4
	}
	if flags&fuzzTSO != 0 {
		features |= netFGuestTSO4
	}
	var log *dirtyLog
	if flags&fuzzLog != 0 {
		a.flags, a.log = vringFlagLog, fuzzUsed
		words := make([]uint32, 2) // a log shorter than the guest's memory: marks past it are dropped
		log = &dirtyLog{mmap: unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), 8)}
	}
	hdrLen := 10
	if features&(fVersion1|netFMrgRxbuf) != 0 {
		hdrLen = 12
	}
	available := availIdx - base // chains the guest made available

	// The transmit queue.
	ring, err := newVring(m, num, a, base)
	if err != nil {
		t.Fatal(err)
	}
	ring.log = log
	link := &fuzzLink{t: t}
	w := &worker{ring: ring, link: link, logf: func(string, ...any) {}, hdrLen: hdrLen, features: features}
	w.drainTX(context.Background(), make([]byte, hdrLen+MaxFrame))
	checkUsed(t, "transmit", ring, usedIdx, available)
	if link.delivered > int(num) {
		t.Fatalf("transmit: %d frames delivered from a ring of %d", link.delivered, num)
	}

	// The receive queue, on the same memory as the guest left it.
	binary.LittleEndian.PutUint32(mem[fuzzUsed:], uint32(usedIdx)<<16)
	ring, err = newVring(m, num, a, base)
	if err != nil {
		t.Fatal(err)
	}
	ring.log = log
	w = &worker{ring: ring, link: link, logf: func(string, ...any) {}, hdrLen: hdrLen, features: features}
	frame := rxFrame
	if flags&fuzzTCP != 0 {
		frame = make([]byte, 54+len(rxFrame))
		binary.BigEndian.PutUint16(frame[12:], 0x0800)
		frame[14], frame[14+9] = 0x45, protoTCP
		frame[14+20+12] = 5 << 4
		copy(frame[54:], rxFrame)
	}
	f := Frame{Data: frame, MSS: mss, PartialChecksum: flags&fuzzPartial != 0}
	for _, u := range w.units(f) {
		if len(u.data) > MaxFrame {
			t.Fatalf("receive: a unit of %d bytes", len(u.data))
		}
		if !w.put(u) || w.broken {
			break
		}
	}
	w.flush()
	checkUsed(t, "receive", ring, usedIdx, available)
	if taken := ring.lastAvail - base; taken > available || taken > num {
		t.Fatalf("receive: %d chains taken of %d available in a ring of %d", taken, available, num)
	}
}

// checkUsed checks the used index ring published: moved from start by no
// more than the chains available and the ring's size.
func checkUsed(t *testing.T, queue string, ring *vring, start, available uint16) {
	t.Helper()
	published := uint16(atomic.LoadUint32(ring.word(ring.used)) >> 16)
	if published != ring.usedIdx {
		t.Fatalf("%s: used index %d published, %d pushed", queue, published, ring.usedIdx)
	}
	if moved := published - start; moved > available || moved > ring.num {
		t.Fatalf("%s: used index moved by %d with %d chains available in a ring of %d", queue, moved, available, ring.num)
	}
}

// TestDrainTXInterrupts: a drain that meets a head past the ring still
// publishes the chains it completed before it and interrupts the driver,
// which would otherwise wait for them forever (the queue stops there).
func TestDrainTXInterrupts(t *testing.T) {
	mem := fuzzMem()
	clear(mem)
	const num = 4
	// Chain 0: one frame; then head 9, past the ring.
	binary.LittleEndian.PutUint64(mem[0:], fuzzBufs)
	binary.LittleEndian.PutUint32(mem[8:], 12+60)
	binary.LittleEndian.PutUint16(mem[fuzzAvail+4:], 0)
	binary.LittleEndian.PutUint16(mem[fuzzAvail+6:], 9)
	binary.LittleEndian.PutUint32(mem[fuzzAvail:], 2<<16)
	m := &memory{regions: []region{{gpa: 0, uva: fuzzUVA, data: mem}}}
	ring, err := newVring(m, num, addresses{desc: fuzzUVA, avail: fuzzUVA + fuzzAvail, used: fuzzUVA + fuzzUsed}, 0)
	if err != nil {
		t.Fatal(err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	call := os.NewFile(uintptr(efd), "call")
	defer call.Close()
	link := &fuzzLink{t: t}
	var logged []string
	w := &worker{ring: ring, call: call, link: link, hdrLen: 12, features: fVersion1,
		logf: func(format string, args ...any) { logged = append(logged, fmt.Sprintf(format, args...)) }}
	w.drainTX(context.Background(), make([]byte, 12+MaxFrame))
	if link.delivered != 1 || !w.broken || len(logged) != 1 {
		t.Fatalf("delivered %d frames, broken %v, logged %q; want 1, true and one message", link.delivered, w.broken, logged)
	}
	if used := uint16(atomic.LoadUint32(ring.word(ring.used)) >> 16); used != 1 {
		t.Errorf("used index %d published, want 1", used)
	}
	var b [8]byte
	if _, err := unix.Read(efd, b[:]); err != nil {
		t.Errorf("the driver was not interrupted: %v", err)
	}
}
