package vhostuser

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Feature bits (virtio 1.x 5.1.3, vhost-user.rst).
const (
	netFCsum          = 1 << 0  // the device completes the guest's partial checksums
	netFGuestCsum     = 1 << 1  // the guest takes partial or validated checksums
	netFMTU           = 1 << 3  // the device announces an MTU (QEMU's host_mtu)
	netFGuestTSO4     = 1 << 7  // the guest takes TCP segments over its MTU
	netFHostTSO4      = 1 << 11 // the device takes TCP segments over the MTU
	netFMrgRxbuf      = 1 << 15 // a received frame may span buffers
	fLogAll           = 1 << 26 // the back-end logs its writes to guest memory
	fProtocolFeatures = 1 << 30 // vhost-user protocol features
	fVersion1         = 1 << 32
)

// Features is what this back-end offers the front-end.
const Features = netFCsum | netFGuestCsum | netFMTU | netFGuestTSO4 | netFHostTSO4 | netFMrgRxbuf | fLogAll | fProtocolFeatures | fVersion1

// Protocol features.
const (
	protoLogShmfd  = 1 << 1 // the dirty log is shared memory
	protoReplyAck  = 1 << 3 // the front-end may ask for an acknowledgement
	protocolOffers = protoLogShmfd | protoReplyAck
)

// Queues of a virtio-net device with one queue pair.
const (
	rxQueue   = 0 // to the guest
	txQueue   = 1 // from the guest
	numQueues = 2
)

// vringNoFD is the flag of a SET_VRING_KICK/CALL/ERR without a descriptor.
const vringNoFD = 0x100

// backend is the back-end of one front-end connection.
type backend struct {
	conn *net.UnixConn
	link Link
	logf func(format string, args ...any)

	features, protocol uint64 // acknowledged by the front-end
	mem                *memory
	log                *dirtyLog
	queues             [numQueues]queue
}

// queue is one virtqueue's configuration and, while it runs, its worker.
type queue struct {
	num        uint16
	addr       addresses
	hasAddr    bool
	base       uint16
	kick, call *os.File
	enabled    bool
	run        *worker
}

// Serve is the back-end of the virtio-net device QEMU connects over conn:
// it answers the front-end's messages and runs the device's queues against
// link until QEMU closes the connection (nil) or ctx ends. It stops the
// queues and unmaps the guest's memory before it returns; a QEMU started
// again connects again and meets a fresh device. logf reports what the
// guest got wrong, which does not end the connection.
func Serve(ctx context.Context, conn *net.UnixConn, link Link, logf func(format string, args ...any)) error {
	b := &backend{conn: conn, link: link, logf: logf}
	defer b.reset()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	for {
		m, err := readMessage(conn)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, unix.ECONNRESET) {
				return nil
			}
			return fmt.Errorf("vhost-user: %w", err)
		}
		err = b.handle(m)
		m.closeFDs()
		if err != nil {
			return fmt.Errorf("vhost-user: %v: %w", m.req, err)
		}
	}
}

// errRefused is a request the back-end refuses without ending the
// connection: the front-end hears of it when it asked for a reply.
type errRefused struct{ error }

func (b *backend) handle(m *message) error {
	replied, err := b.dispatch(m)
	var refused errRefused
	if errors.As(err, &refused) {
		b.logf("vhost-user: %v refused: %v", m.req, refused.error)
	} else if err != nil {
		return err
	}
	if m.flags&flagNeedReply != 0 && b.protocol&protoReplyAck != 0 && !replied {
		var status uint64
		if err != nil {
			status = 1
		}
		return replyU64(b.conn, m.req, status)
	}
	return nil
}

// dispatch carries out one request; replied says it answered already.
func (b *backend) dispatch(m *message) (replied bool, err error) {
	switch m.req {
	case reqGetFeatures:
		return true, replyU64(b.conn, m.req, Features)
	case reqSetFeatures:
		v, err := m.u64()
		if err != nil {
			return false, err
		}
		if v&^Features != 0 {
			return false, fmt.Errorf("features %#x not offered (%#x)", v&^Features, uint64(Features))
		}
		b.features = v
		for i := range b.queues { // logging turned on or off
			if b.queues[i].run != nil {
				b.restart(i)
			}
		}
		return false, nil
	case reqGetProtocolFeatures:
		return true, replyU64(b.conn, m.req, protocolOffers)
	case reqSetProtocolFeatures:
		v, err := m.u64()
		if err != nil {
			return false, err
		}
		b.protocol = v & protocolOffers
		return false, nil
	case reqGetQueueNum:
		return true, replyU64(b.conn, m.req, numQueues)
	case reqSetOwner, reqSendRARP:
		return false, nil
	case reqResetOwner:
		b.reset()
		return false, nil
	case reqSetMemTable:
		fds := m.fds
		m.fds = nil
		mem, err := mapMemory(m.payload, fds)
		if err != nil {
			return false, err
		}
		running := b.stopAll()
		b.mem.unmap()
		b.mem = mem
		for _, i := range running {
			b.start(i)
		}
		return false, nil
	case reqSetLogBase:
		fd := m.takeFD()
		if fd < 0 {
			return false, errors.New("no descriptor for the log")
		}
		l, err := mapLog(m.payload, fd)
		if err != nil {
			return false, err
		}
		running := b.stopAll()
		b.log.unmap()
		b.log = l
		for _, i := range running {
			b.start(i)
		}
		return true, replyU64(b.conn, m.req, 0)
	case reqSetLogFD:
		return false, nil // closed with the message: no log events are sent
	case reqSetVringNum:
		i, num, err := b.vringState(m)
		if err != nil {
			return false, err
		}
		if num == 0 || num > maxQueueSize || num&(num-1) != 0 {
			return false, errRefused{fmt.Errorf("queue %d: size %d is not a power of two up to %d", i, num, maxQueueSize)}
		}
		b.queues[i].num = uint16(num)
		return false, nil
	case reqSetVringAddr:
		if len(m.payload) < 40 {
			return false, fmt.Errorf("payload of %d bytes, want 40", len(m.payload))
		}
		i := binary.LittleEndian.Uint32(m.payload)
		if i >= numQueues {
			return false, fmt.Errorf("queue %d of %d", i, numQueues)
		}
		p := m.payload
		b.queues[i].addr = addresses{flags: binary.LittleEndian.Uint32(p[4:]), desc: binary.LittleEndian.Uint64(p[8:]),
			used: binary.LittleEndian.Uint64(p[16:]), avail: binary.LittleEndian.Uint64(p[24:]), log: binary.LittleEndian.Uint64(p[32:])}
		b.queues[i].hasAddr = true
		if b.queues[i].run != nil {
			b.restart(int(i))
		}
		return false, nil
	case reqSetVringBase:
		i, num, err := b.vringState(m)
		if err != nil {
			return false, err
		}
		running := b.queues[i].run != nil
		b.stop(int(i)) // a running queue's own index would overwrite it
		b.queues[i].base = uint16(num)
		if running {
			b.start(int(i))
		}
		return false, nil
	case reqGetVringBase:
		i, _, err := b.vringState(m)
		if err != nil {
			return false, err
		}
		q := &b.queues[i]
		b.stop(int(i))
		if q.kick != nil {
			q.kick.Close()
			q.kick = nil
		}
		var p [8]byte
		binary.LittleEndian.PutUint32(p[:], i)
		binary.LittleEndian.PutUint32(p[4:], uint32(q.base))
		return true, reply(b.conn, m.req, p[:])
	case reqSetVringKick, reqSetVringCall, reqSetVringErr:
		v, err := m.u64()
		if err != nil {
			return false, err
		}
		i := int(v & 0xff)
		if i >= numQueues {
			return false, fmt.Errorf("queue %d of %d", i, numQueues)
		}
		var f *os.File
		if v&vringNoFD == 0 {
			fd := m.takeFD()
			if fd < 0 {
				return false, errors.New("no descriptor")
			}
			if err := unix.SetNonblock(fd, true); err != nil {
				unix.Close(fd)
				return false, err
			}
			f = os.NewFile(uintptr(fd), fmt.Sprintf("vring%d-%v", i, m.req))
		}
		q := &b.queues[i]
		switch m.req {
		case reqSetVringErr:
			if f != nil {
				f.Close() // nothing to report through it
			}
		case reqSetVringKick:
			if f == nil {
				return false, errRefused{fmt.Errorf("queue %d: polling without a kick descriptor is not supported", i)}
			}
			b.stop(i)
			if q.kick != nil {
				q.kick.Close()
			}
			q.kick = f
			if b.features&fProtocolFeatures == 0 {
				q.enabled = true // without protocol features a ring starts enabled
			}
			b.start(i)
		case reqSetVringCall:
			running := q.run != nil
			b.stop(i)
			if q.call != nil {
				q.call.Close()
			}
			q.call = f
			if running {
				b.start(i)
			}
		}
		return false, nil
	case reqSetVringEnable:
		i, num, err := b.vringState(m)
		if err != nil {
			return false, err
		}
		b.queues[i].enabled = num != 0
		if num != 0 {
			b.start(int(i))
		} else {
			b.stop(int(i))
		}
		return false, nil
	}
	return false, errRefused{errors.New("not supported")}
}

func (b *backend) vringState(m *message) (uint32, uint32, error) {
	i, num, err := m.state()
	if err == nil && i >= numQueues {
		err = fmt.Errorf("queue %d of %d", i, numQueues)
	}
	return i, num, err
}

// start runs queue i when it has all it needs; a ring outside guest memory
// is the guest's error, reported, and the queue stays stopped.
func (b *backend) start(i int) {
	q := &b.queues[i]
	if q.run != nil || q.kick == nil || !q.hasAddr || q.num == 0 || b.mem == nil || !q.enabled {
		return
	}
	ring, err := newVring(b.mem, q.num, q.addr, q.base)
	if err != nil {
		b.logf("vhost-user: queue %d: %v", i, err)
		return
	}
	if b.features&fLogAll != 0 {
		ring.log = b.log
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &worker{ring: ring, kick: q.kick, call: q.call, link: b.link, logf: b.logf,
		hdrLen: b.headerLen(), features: b.features, cancel: cancel, done: make(chan struct{})}
	q.run = w
	go func() {
		defer close(w.done)
		if i == rxQueue {
			w.toGuest(ctx)
		} else {
			w.fromGuest(ctx)
		}
	}()
}

// stop stops queue i's worker and waits for it: the ring is untouched
// from then on. The next start resumes where it stopped.
func (b *backend) stop(i int) {
	q := &b.queues[i]
	w := q.run
	if w == nil {
		return
	}
	w.cancel()
	w.kick.SetReadDeadline(time.Now())
	<-w.done
	w.kick.SetReadDeadline(time.Time{})
	q.base = w.ring.lastAvail
	q.run = nil
}

func (b *backend) restart(i int) {
	b.stop(i)
	b.start(i)
}

// stopAll stops every queue and returns those that ran.
func (b *backend) stopAll() []int {
	var running []int
	for i := range b.queues {
		if b.queues[i].run != nil {
			b.stop(i)
			running = append(running, i)
		}
	}
	return running
}

// reset stops the device and lets go of everything the front-end gave.
func (b *backend) reset() {
	b.stopAll()
	for i := range b.queues {
		q := &b.queues[i]
		if q.kick != nil {
			q.kick.Close()
		}
		if q.call != nil {
			q.call.Close()
		}
		*q = queue{}
	}
	b.mem.unmap()
	b.mem = nil
	b.log.unmap()
	b.log = nil
	b.features, b.protocol = 0, 0
}

// headerLen is the size of the virtio-net header before every frame.
func (b *backend) headerLen() int {
	if b.features&(fVersion1|netFMrgRxbuf) != 0 {
		return 12
	}
	return 10
}
