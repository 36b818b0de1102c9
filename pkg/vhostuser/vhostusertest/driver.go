// Package vhostusertest plays QEMU and the guest's virtio-net driver
// against a vhost-user back-end, for tests without a VM: it negotiates
// over the socket as QEMU's front-end does, lays out split virtqueues and
// buffers in a memfd it shares as the guest's RAM, and sends and receives
// frames as a driver does. Stream gives the frames to code that reads
// QEMU's -netdev stream (each frame behind its 4-byte big-endian length).
package vhostusertest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// Options are the features the driver takes.
type Options struct {
	// Offloads takes checksum offload and TCP segmentation both ways, as
	// Linux's driver does; without it the driver takes none, as an old
	// guest (or firmware) does, and the back-end must do both itself.
	Offloads bool
}

// Memory layout of the fake guest RAM (guest physical addresses).
const (
	queueSize = 256
	memSize   = 8 << 20
	uvaBase   = 0x7f0000000000 // "QEMU's" address of guest physical 0
	rxRing    = 0x0000
	txRing    = 0x8000
	rxBufs    = 0x10000
	rxBufSize = 4096
	txBufs    = 0x200000
	txSlot    = 0x11000 // a header and the largest frame
	txSlots   = 32
	hdrLen    = 12
)

// ring offsets within a queue's area.
const (
	descOff  = 0
	availOff = 0x1000
	usedOff  = 0x2000
)

// Driver is one connected front-end and its guest driver.
type Driver struct {
	conn *net.UnixConn
	mem  []byte
	// Features is what the driver acknowledged.
	Features uint64

	kick, call [2]*os.File

	txMu    sync.Mutex
	txFree  []uint16
	txAvail uint16
	txUsed  uint16

	rxAvail uint16
	rxUsed  uint16

	closeOnce sync.Once
	done      chan struct{}
}

// Feature bits the driver may take.
const (
	fCsum       = 1 << 0
	fGuestCsum  = 1 << 1
	fGuestTSO4  = 1 << 7
	fHostTSO4   = 1 << 11
	fMrgRxbuf   = 1 << 15
	fProtocol   = 1 << 30
	fVersion1   = 1 << 32
	protoAck    = 1 << 3
	flagNeedAck = 0x8
)

// Connect negotiates with the back-end on conn and starts both queues.
func Connect(conn *net.UnixConn, opt Options) (*Driver, error) {
	d := &Driver{conn: conn, done: make(chan struct{})}
	fd, err := unix.MemfdCreate("guest-ram", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, memSize); err != nil {
		return nil, err
	}
	if d.mem, err = unix.Mmap(fd, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, err
	}
	offered, err := d.getU64(1)
	if err != nil {
		return nil, err
	}
	want := uint64(fVersion1 | fMrgRxbuf | fProtocol)
	if opt.Offloads {
		want |= fCsum | fGuestCsum | fGuestTSO4 | fHostTSO4
	}
	d.Features = offered & want
	if _, err := d.getU64(15); err != nil { // GET_PROTOCOL_FEATURES
		return nil, err
	}
	steps := []func() error{
		func() error { return d.send(16, 0, u64(protoAck), nil) }, // SET_PROTOCOL_FEATURES
		func() error { return d.send(3, 0, nil, nil) },            // SET_OWNER
		func() error { return d.send(2, 0, u64(d.Features), nil) },
		func() error {
			p := make([]byte, 8+32)
			binary.LittleEndian.PutUint32(p, 1)
			binary.LittleEndian.PutUint64(p[8:], 0)
			binary.LittleEndian.PutUint64(p[16:], memSize)
			binary.LittleEndian.PutUint64(p[24:], uvaBase)
			return d.sendAcked(5, p, []int{fd})
		},
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return nil, err
		}
	}
	for q, base := range []uint64{rxRing, txRing} {
		if err := d.startQueue(q, base); err != nil {
			return nil, err
		}
	}
	for i := range txSlots {
		d.txFree = append(d.txFree, uint16(i))
	}
	d.postRx(queueSize)
	return d, nil
}

func (d *Driver) startQueue(q int, base uint64) error {
	if err := d.send(8, 0, state(q, queueSize), nil); err != nil { // SET_VRING_NUM
		return err
	}
	if err := d.send(10, 0, state(q, 0), nil); err != nil { // SET_VRING_BASE
		return err
	}
	a := make([]byte, 40)
	binary.LittleEndian.PutUint32(a, uint32(q))
	binary.LittleEndian.PutUint64(a[8:], uvaBase+base+descOff)
	binary.LittleEndian.PutUint64(a[16:], uvaBase+base+usedOff)
	binary.LittleEndian.PutUint64(a[24:], uvaBase+base+availOff)
	if err := d.send(9, 0, a, nil); err != nil { // SET_VRING_ADDR
		return err
	}
	for i, req := range []uint32{12, 13} { // SET_VRING_KICK, SET_VRING_CALL
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(efd), "eventfd")
		if i == 0 {
			d.kick[q] = f
		} else {
			d.call[q] = f
		}
		if err := d.send(req, 0, u64(uint64(q)), []int{efd}); err != nil {
			return err
		}
	}
	return d.send(18, 0, state(q, 1), nil) // SET_VRING_ENABLE
}

func u64(v uint64) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return b
}

func state(q int, n uint32) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint32(b, uint32(q))
	binary.LittleEndian.PutUint32(b[4:], n)
	return b
}

// Send writes one message as QEMU does: header and payload in one write,
// the descriptors with it.
func (d *Driver) send(req, flags uint32, payload []byte, fds []int) error {
	b := make([]byte, 12+len(payload))
	binary.LittleEndian.PutUint32(b, req)
	binary.LittleEndian.PutUint32(b[4:], 1|flags)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(payload)))
	copy(b[12:], payload)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err := d.conn.WriteMsgUnix(b, oob, nil)
	return err
}

// Raw sends a message as it is, for tests of what QEMU would never send.
func (d *Driver) Raw(req uint32, payload []byte, fds []int) error {
	return d.send(req, 0, payload, fds)
}

func (d *Driver) readReply(req uint32) ([]byte, error) {
	var h [12]byte
	d.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer d.conn.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(d.conn, h[:]); err != nil {
		return nil, err
	}
	if got := binary.LittleEndian.Uint32(h[:]); got != req || binary.LittleEndian.Uint32(h[4:])&0x4 == 0 {
		return nil, fmt.Errorf("reply to %d: request %d, flags %#x", req, got, binary.LittleEndian.Uint32(h[4:]))
	}
	p := make([]byte, binary.LittleEndian.Uint32(h[8:]))
	_, err := io.ReadFull(d.conn, p)
	return p, err
}

func (d *Driver) getU64(req uint32) (uint64, error) {
	if err := d.send(req, 0, nil, nil); err != nil {
		return 0, err
	}
	p, err := d.readReply(req)
	if err != nil {
		return 0, err
	}
	if len(p) != 8 {
		return 0, fmt.Errorf("reply to %d of %d bytes", req, len(p))
	}
	return binary.LittleEndian.Uint64(p), nil
}

// sendAcked sends a message asking for the back-end's acknowledgement.
func (d *Driver) sendAcked(req uint32, payload []byte, fds []int) error {
	if err := d.send(req, flagNeedAck, payload, fds); err != nil {
		return err
	}
	p, err := d.readReply(req)
	if err != nil {
		return err
	}
	if len(p) != 8 || binary.LittleEndian.Uint64(p) != 0 {
		return fmt.Errorf("request %d refused (%x)", req, p)
	}
	return nil
}

// GetVringBase stops queue q, as QEMU does when the guest resets the
// device, and returns where the back-end stopped.
func (d *Driver) GetVringBase(q int) (uint32, error) {
	if err := d.send(11, 0, state(q, 0), nil); err != nil {
		return 0, err
	}
	p, err := d.readReply(11)
	if err != nil || len(p) != 8 {
		return 0, fmt.Errorf("GET_VRING_BASE: %x, %v", p, err)
	}
	return binary.LittleEndian.Uint32(p[4:]), nil
}

// Mem is the guest's RAM, for tests that write what a hostile guest would.
func (d *Driver) Mem() []byte { return d.mem }

func (d *Driver) word(off uint64) *uint32 { return (*uint32)(unsafe.Pointer(&d.mem[off])) }

func (d *Driver) putDesc(ring uint64, i uint16, addr uint64, n uint32, flags, next uint16) {
	b := d.mem[ring+descOff+16*uint64(i):]
	binary.LittleEndian.PutUint64(b, addr)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
}

// makeAvail puts head in ring's available ring at *idx and publishes it.
func (d *Driver) makeAvail(ring uint64, idx *uint16, head uint16) {
	binary.LittleEndian.PutUint16(d.mem[ring+availOff+4+2*uint64(*idx%queueSize):], head)
	*idx++
	atomic.StoreUint32(d.word(ring+availOff), uint32(*idx)<<16)
}

func (d *Driver) usedIdx(ring uint64) uint16 {
	return uint16(atomic.LoadUint32(d.word(ring+usedOff)) >> 16)
}

func (d *Driver) usedEntry(ring uint64, i uint16) (id, n uint32) {
	b := d.mem[ring+usedOff+4+8*uint64(i%queueSize):]
	return binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:])
}

func notify(f *os.File) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], 1)
	f.Write(b[:])
}

// postRx makes n receive buffers available, one descriptor each.
func (d *Driver) postRx(n int) {
	for range n {
		i := d.rxAvail % queueSize
		d.putDesc(rxRing, i, rxBufs+uint64(i)*rxBufSize, rxBufSize, 2 /* write */, 0)
		d.makeAvail(rxRing, &d.rxAvail, i)
	}
	notify(d.kick[0])
}

// Send transmits one Ethernet frame, waiting up to the deadline of ctx
// for a free transmit buffer. A frame over the MTU is a TCP segment the
// driver leaves to the device (Options.Offloads).
func (d *Driver) Send(ctx context.Context, frame []byte) error {
	if len(frame) > txSlot-hdrLen {
		return fmt.Errorf("frame of %d bytes", len(frame))
	}
	d.txMu.Lock()
	defer d.txMu.Unlock()
	for {
		for d.txUsed != d.usedIdx(txRing) {
			id, _ := d.usedEntry(txRing, d.txUsed)
			d.txUsed++
			if id < txSlots { // not a chain PostRaw made
				d.txFree = append(d.txFree, uint16(id))
			}
		}
		if len(d.txFree) > 0 {
			break
		}
		if err := d.wait(ctx, d.call[1]); err != nil {
			return err
		}
	}
	slot := d.txFree[len(d.txFree)-1]
	d.txFree = d.txFree[:len(d.txFree)-1]
	addr := txBufs + uint64(slot)*txSlot
	clear(d.mem[addr : addr+hdrLen])
	copy(d.mem[addr+hdrLen:], frame)
	d.putDesc(txRing, slot, addr, uint32(hdrLen+len(frame)), 0, 0)
	d.makeAvail(txRing, &d.txAvail, slot)
	notify(d.kick[1])
	return nil
}

// wait reads an eventfd, until ctx ends.
func (d *Driver) wait(ctx context.Context, f *os.File) error {
	if dl, ok := ctx.Deadline(); ok {
		f.SetReadDeadline(dl)
	} else {
		f.SetReadDeadline(time.Now().Add(time.Second))
	}
	var b [8]byte
	_, err := f.Read(b[:])
	if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
		return nil // look again
	}
	if err != nil {
		return err
	}
	return ctx.Err()
}

// Recv returns the next frame the back-end put in the receive queue, its
// partial checksum completed as a driver's stack would.
func (d *Driver) Recv(ctx context.Context) ([]byte, error) {
	for d.rxUsed == d.usedIdx(rxRing) {
		if err := d.wait(ctx, d.call[0]); err != nil {
			return nil, err
		}
	}
	var frame []byte
	id, n := d.usedEntry(rxRing, d.rxUsed)
	d.rxUsed++
	buf := d.mem[rxBufs+uint64(id)*rxBufSize:][:min(n, rxBufSize)]
	if len(buf) < hdrLen {
		d.postRx(1)
		return nil, fmt.Errorf("receive buffer of %d bytes", len(buf))
	}
	var hdr [hdrLen]byte
	copy(hdr[:], buf)
	frame = append(frame, buf[hdrLen:]...)
	nb := binary.LittleEndian.Uint16(hdr[10:])
	for k := uint16(1); k < nb; k++ {
		for d.rxUsed == d.usedIdx(rxRing) {
			if err := d.wait(ctx, d.call[0]); err != nil {
				return nil, err
			}
		}
		id, n := d.usedEntry(rxRing, d.rxUsed)
		d.rxUsed++
		frame = append(frame, d.mem[rxBufs+uint64(id)*rxBufSize:][:min(n, rxBufSize)]...)
	}
	d.postRx(int(max(nb, 1)))
	if hdr[0]&1 != 0 { // NEEDS_CSUM
		start := int(binary.LittleEndian.Uint16(hdr[6:]))
		off := int(binary.LittleEndian.Uint16(hdr[8:]))
		if start+off+2 <= len(frame) {
			binary.BigEndian.PutUint16(frame[start+off:], ^checksum.Checksum(frame[start:], 0))
		}
	}
	return frame, nil
}

// Stream returns the frames as QEMU's -netdev stream socket carries them,
// for a guest stack that reads one (usernettest): what is written to it
// is sent, what is received can be read from it. It ends with the driver.
func (d *Driver) Stream() (net.Conn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "stream"), os.NewFile(uintptr(fds[1]), "stream")
	c, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		theirs.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	context.AfterFunc(ctx, func() { c.Close() })
	go func() { <-d.done; cancel() }()
	go func() { // to the guest stack
		defer cancel()
		for {
			f, err := d.Recv(ctx)
			if err != nil {
				return
			}
			b := make([]byte, 4+len(f))
			binary.BigEndian.PutUint32(b, uint32(len(f)))
			copy(b[4:], f)
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	go func() { // from the guest stack
		defer cancel()
		var p [4]byte
		for {
			if _, err := io.ReadFull(c, p[:]); err != nil {
				return
			}
			f := make([]byte, binary.BigEndian.Uint32(p[:]))
			if _, err := io.ReadFull(c, f); err != nil {
				return
			}
			if err := d.Send(ctx, f); err != nil {
				return
			}
		}
	}()
	out, err := net.FileConn(theirs)
	theirs.Close()
	return out, err
}

// Desc is one descriptor as a guest writes it, for tests of what a
// hostile guest may write.
type Desc struct {
	Addr  uint64
	Len   uint32
	Flags uint16
	Next  uint16
}

// Descriptor flags.
const (
	DescNext     = 1
	DescWrite    = 2
	DescIndirect = 4
)

// Queue indexes.
const (
	RxQueue = 0
	TxQueue = 1
)

// Layout of the guest's RAM that tests writing raw descriptors need:
// QueueSize entries a queue; descriptors from RawFirst on are not the
// driver's own (Send uses those below txSlots, receive buffers take the
// receive queue's whole table), and RawBuf, of RawBufSize bytes, is
// guest memory no buffer of the driver's uses.
const (
	QueueSize  = queueSize
	MemSize    = memSize
	RawFirst   = txSlots
	RawBuf     = txBufs + txSlots*txSlot
	RawBufSize = memSize - RawBuf
)

// PostRaw writes descs into the transmit queue's descriptor table (by
// index, each at or above RawFirst), makes heads available as they are,
// whatever they are, and kicks the device. It is Send for a hostile
// guest; the device's used entries for these heads are not given back
// to Send.
func (d *Driver) PostRaw(descs map[uint16]Desc, heads ...uint16) {
	d.txMu.Lock()
	defer d.txMu.Unlock()
	for i, x := range descs {
		if i < RawFirst || i >= queueSize {
			panic(fmt.Sprintf("vhostusertest: raw descriptor %d outside [%d, %d)", i, RawFirst, queueSize))
		}
		d.putDesc(txRing, i, x.Addr, x.Len, x.Flags, x.Next)
	}
	for _, h := range heads {
		d.makeAvail(txRing, &d.txAvail, h)
	}
	notify(d.kick[1])
}

// UsedIdx is the used index the device published on queue q.
func (d *Driver) UsedIdx(q int) uint16 { return d.usedIdx([]uint64{rxRing, txRing}[q]) }

// WaitUsed waits, up to the deadline of ctx, until the device's used
// index on queue q is idx or past it.
func (d *Driver) WaitUsed(ctx context.Context, q int, idx uint16) error {
	for int16(d.UsedIdx(q)-idx) < 0 {
		if err := d.wait(ctx, d.call[q]); err != nil {
			return fmt.Errorf("used index %d, want %d: %w", d.UsedIdx(q), idx, err)
		}
	}
	return nil
}

// PublishAvail publishes idx as queue q's available index, whatever the
// entries say, and kicks the device: a guest's bogus index.
func (d *Driver) PublishAvail(q int, idx uint16) {
	atomic.StoreUint32(d.word([]uint64{rxRing, txRing}[q]+availOff), uint32(idx)<<16)
	notify(d.kick[q])
}

// AvailIdx is the available index the driver published on queue q.
func (d *Driver) AvailIdx(q int) uint16 {
	return uint16(atomic.LoadUint32(d.word([]uint64{rxRing, txRing}[q]+availOff)) >> 16)
}

// Restart starts queue q again after GetVringBase stopped it, as QEMU
// does when the guest resets the device: from the available index base,
// with a new kick descriptor.
func (d *Driver) Restart(q int, base uint32) error {
	if err := d.send(10, 0, state(q, base), nil); err != nil { // SET_VRING_BASE
		return err
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return err
	}
	d.txMu.Lock()
	old := d.kick[q]
	d.kick[q] = os.NewFile(uintptr(efd), "eventfd")
	d.txMu.Unlock()
	old.Close()
	if err := d.send(12, 0, u64(uint64(q)), []int{efd}); err != nil { // SET_VRING_KICK
		return err
	}
	if err := d.send(18, 0, state(q, 1), nil); err != nil { // SET_VRING_ENABLE
		return err
	}
	notify(d.kick[q])
	return nil
}

// Close closes the connection, as a QEMU that exits does.
func (d *Driver) Close() {
	d.closeOnce.Do(func() {
		close(d.done)
		d.conn.Close()
		for _, f := range append(d.kick[:], d.call[:]...) {
			if f != nil {
				f.Close()
			}
		}
	})
}

// Interrupts reads and resets the count of interrupts the device raised on
// queue q since the last read (Recv and Send read them too).
func (d *Driver) Interrupts(q int) uint64 {
	var b [8]byte
	if n, err := unix.Read(int(d.call[q].Fd()), b[:]); err != nil || n != 8 {
		return 0
	}
	return binary.LittleEndian.Uint64(b[:])
}
