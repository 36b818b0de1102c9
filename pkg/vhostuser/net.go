package vhostuser

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
)

// MaxFrame bounds an Ethernet frame either way: an IPv4 packet of 65535
// bytes, the most a TCP segment offloaded to either side can be, and its
// Ethernet header.
const MaxFrame = 65535 + 14

// AdmitPrefix is as much of a guest's frame as Link.Admit sees: the
// Ethernet header, the longest IPv4 header and a UDP header.
const AdmitPrefix = 14 + 60 + 8

// Link is the network on the device's other side.
type Link interface {
	// Admit decides on a frame from the guest by its first bytes (at most
	// AdmitPrefix), before the frame is copied out of guest memory.
	Admit(head []byte) bool
	// Deliver takes a frame the guest sent, an Ethernet frame the callee
	// now owns. Its TCP segments may exceed the MTU (segmentation
	// offload) and its checksums may be partial (checksum offload): the
	// link must not check them. Frames come from guest memory, not a wire.
	Deliver(frame []byte)
	// Next returns the next frame for the guest; with wait it blocks until
	// one is ready or ctx ends, without it returns false when none is.
	Next(ctx context.Context, wait bool) (Frame, bool)
}

// Frame is one Ethernet frame for the guest.
type Frame struct {
	Data []byte
	// MSS, when not 0, is the segment size of a TCP frame that may carry
	// more than one segment: the guest, or this package, segments it.
	MSS uint16
	// PartialChecksum says the TCP or UDP checksum holds only the
	// pseudo-header's sum: the guest, or this package, completes it.
	PartialChecksum bool
	// Release, when not nil, is called once Data is no longer used.
	Release func()
}

// virtio-net header fields (virtio 1.x 5.1.6).
const (
	hdrNeedsCsum = 1
	hdrDataValid = 2
	gsoNone      = 0
	gsoTCPv4     = 1
)

// unit is what goes into the receive queue for one frame: its header and
// its bytes.
type unit struct {
	hdr  [12]byte
	data []byte
}

// worker runs one queue.
type worker struct {
	ring       *vring
	kick, call *os.File
	link       Link
	logf       func(format string, args ...any)
	hdrLen     int
	features   uint64
	cancel     context.CancelFunc
	done       chan struct{}
	broken     bool
	complaints int // errors of the guest's seen on this queue
}

// maxBatch is the most frames moved before the guest hears of them.
const maxBatch = 64

// waitKick waits for the driver's next kick; false once the queue stops.
func (w *worker) waitKick(ctx context.Context) bool {
	var b [8]byte
	_, err := w.kick.Read(b[:])
	return err == nil && ctx.Err() == nil
}

// interrupt tells the driver of the used entries published, if it wants.
func (w *worker) interrupt() {
	if w.call != nil && w.ring.wantsInterrupt() {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], 1)
		w.call.Write(b[:])
	}
}

func (w *worker) flush() {
	w.ring.publish()
	w.interrupt()
}

// chainError reports a chain the guest broke. An out-of-range head leaves
// nothing to complete, and the queue stops until the device is reset.
func (w *worker) chainError(err error, head uint16) {
	w.complain("%v", err)
	if head >= w.ring.num {
		w.broken = true
	}
}

// complain logs what the guest got wrong: the first few times, then one
// line in a thousand, so that a guest repeating it cannot fill the log.
func (w *worker) complain(format string, args ...any) {
	w.complaints++
	switch {
	case w.complaints <= 100:
		w.logf("vhost-user: "+format, args...)
	case w.complaints%1000 == 0:
		w.logf("vhost-user: "+format+" (%d such errors on this queue)", append(args, w.complaints)...)
	}
}

// fromGuest carries the guest's frames (the transmit queue) to the link.
func (w *worker) fromGuest(ctx context.Context) {
	scratch := make([]byte, w.hdrLen+MaxFrame)
	for {
		for {
			w.ring.notifications(false)
			w.drainTX(ctx, scratch)
			w.ring.notifications(true)
			if w.broken || ctx.Err() != nil || !w.ring.pending() {
				break
			}
		}
		if w.broken || !w.waitKick(ctx) {
			return
		}
	}
}

// drainTX takes every available chain, frames to the link, and completes
// each (a transmit buffer is read, not written: length 0), until none is
// left or the queue stops: a guest that never stops sending cannot keep a
// stop waiting.
func (w *worker) drainTX(ctx context.Context, scratch []byte) {
	batch := 0
	for ctx.Err() == nil {
		head, ok, err := w.ring.pop()
		if !ok {
			break
		}
		if err != nil {
			w.chainError(err, head)
			break // publish what was completed before it
		}
		n := 0
		err = w.ring.walk(head, func(buf []byte, _ uint64, writable bool) error {
			if writable {
				return fmt.Errorf("%w: writable descriptor in a transmit chain", errChain)
			}
			if len(buf) > len(scratch)-n {
				return fmt.Errorf("%w: frame over %d bytes", errChain, MaxFrame)
			}
			n += copy(scratch[n:], buf)
			return nil
		})
		w.ring.push(head, 0)
		if batch++; batch == maxBatch {
			w.flush()
			batch = 0
		}
		if err != nil {
			w.chainError(err, head)
			continue
		}
		if n < w.hdrLen+14 {
			continue // shorter than an Ethernet header: nothing to carry
		}
		frame := scratch[w.hdrLen:n]
		if !w.link.Admit(frame[:min(len(frame), AdmitPrefix)]) {
			continue
		}
		w.link.Deliver(append([]byte(nil), frame...))
	}
	w.flush()
}

// toGuest carries the link's frames into the receive queue.
func (w *worker) toGuest(ctx context.Context) {
	w.ring.notifications(false) // kicks only while waiting for buffers
	for {
		f, ok := w.link.Next(ctx, true)
		if !ok {
			return
		}
		for batch := 0; ok; batch++ {
			if ctx.Err() != nil {
				release(f)
				return
			}
			if batch == maxBatch {
				w.flush()
				batch = 0
			}
			if !w.deliver(ctx, f) {
				return
			}
			f, ok = w.link.Next(ctx, false)
		}
		w.flush()
	}
}

// deliver puts f into the receive queue, waiting for buffers as long as it
// takes; false once the queue stops. A frame that all the ring's buffers
// could not hold is dropped.
func (w *worker) deliver(ctx context.Context, f Frame) bool {
	defer release(f)
	if len(f.Data) > MaxFrame {
		w.complain("a frame of %d bytes for the guest, over %d: dropped", len(f.Data), MaxFrame)
		return true
	}
	for _, u := range w.units(f) {
		for {
			seen := w.ring.availIdx()
			if w.put(u) {
				break
			}
			if w.broken || ctx.Err() != nil {
				return false
			}
			if seen-w.ring.lastAvail >= w.ring.num {
				w.complain("a frame of %d bytes does not fit in a full ring's receive buffers: dropped", len(u.data))
				break
			}
			if !w.waitBuffers(ctx, seen) {
				return false
			}
		}
	}
	return !w.broken
}

func release(f Frame) {
	if f.Release != nil {
		f.Release()
	}
}

// waitBuffers publishes what was filled and waits for the driver to make
// more receive buffers available than it had at seen; false once the
// queue stops.
func (w *worker) waitBuffers(ctx context.Context, seen uint16) bool {
	w.flush()
	w.ring.notifications(true)
	defer w.ring.notifications(false)
	if w.ring.availIdx() != seen {
		return true
	}
	return w.waitKick(ctx)
}

// put copies u into the receive queue's next chains: one chain, or with
// mergeable buffers as many as it takes. It returns false, having taken
// nothing, when the available chains cannot hold it.
func (w *worker) put(u unit) bool {
	mergeable := w.features&netFMrgRxbuf != 0
	src := [2][]byte{u.hdr[:w.hdrLen], u.data}
	var hdrParts [12][]byte // where the header went, for num_buffers
	nh := 0
	written, total := 0, w.hdrLen+len(u.data)
	taken := uint16(0)
	for written < total {
		head, ok, err := w.ring.pop()
		if !ok {
			w.ring.unpop(taken)
			w.ring.usedIdx -= taken
			return false
		}
		taken++
		if err != nil {
			w.chainError(err, head)
			w.broken = true
			return true
		}
		n := 0
		err = w.ring.walk(head, func(buf []byte, gpa uint64, writable bool) error {
			if !writable {
				return fmt.Errorf("%w: read-only descriptor in a receive chain", errChain)
			}
			start := written + n
			for len(buf) > 0 && written+n < total {
				var s []byte
				if written+n < w.hdrLen {
					s = src[0][written+n:]
				} else {
					s = src[1][written+n-w.hdrLen:]
				}
				c := copy(buf, s)
				if written+n < w.hdrLen && nh < len(hdrParts) {
					hdrParts[nh] = buf[:c]
					nh++
				}
				buf = buf[c:]
				n += c
			}
			if w.ring.log != nil {
				w.ring.log.mark(gpa, uint64(written+n-start))
			}
			return nil
		})
		if err != nil {
			// A receive chain the guest broke may hold part of a frame
			// already: the queue stops until the device is reset.
			w.ring.push(head, 0)
			w.chainError(err, head)
			w.broken = true
			return true
		}
		w.ring.push(head, uint32(n))
		written += n
		if !mergeable && written < total {
			w.complain("a receive buffer of %d bytes cannot hold a frame of %d", n, total)
			return true
		}
	}
	if w.hdrLen == 12 { // num_buffers: 1 without mergeable buffers

		var nb [2]byte
		binary.LittleEndian.PutUint16(nb[:], taken)
		// num_buffers is the header's last field (bytes 10 and 11).
		off := 0
		for _, p := range hdrParts[:nh] {
			for j := range p {
				if k := off + j; k == 10 || k == 11 {
					p[j] = nb[k-10]
				}
			}
			off += len(p)
		}
	}
	return true
}

// units turns a frame into what the receive queue takes: as it is, with
// the offloads the guest took said in its header, or segmented and
// checksummed here for a guest that took none.
func (w *worker) units(f Frame) []unit {
	d := f.Data
	var u unit
	ip, ok := parseIPv4(d)
	if !ok || !f.PartialChecksum || (ip.proto != protoTCP && ip.proto != protoUDP) {
		return []unit{{data: d}}
	}
	csumOff := uint16(16)
	if ip.proto == protoUDP {
		csumOff = 6
	}
	if f.MSS != 0 && ip.proto == protoTCP && len(d) > ip.l4+ip.tcpLen && len(d)-ip.l4-ip.tcpLen > int(f.MSS) {
		if w.features&netFGuestTSO4 == 0 {
			segs := segmentTCP(d, ip, int(f.MSS))
			out := make([]unit, len(segs))
			for i, s := range segs {
				out[i] = unit{data: s}
			}
			return out
		}
		u.hdr[0] = hdrNeedsCsum
		u.hdr[1] = gsoTCPv4
		binary.LittleEndian.PutUint16(u.hdr[2:], uint16(ip.l4+ip.tcpLen))
		binary.LittleEndian.PutUint16(u.hdr[4:], f.MSS)
		binary.LittleEndian.PutUint16(u.hdr[6:], uint16(ip.l4))
		binary.LittleEndian.PutUint16(u.hdr[8:], csumOff)
		u.data = d
		return []unit{u}
	}
	if w.features&netFGuestCsum == 0 {
		completeChecksum(d, ip.l4, int(csumOff))
		return []unit{{data: d}}
	}
	u.hdr[0] = hdrNeedsCsum
	binary.LittleEndian.PutUint16(u.hdr[6:], uint16(ip.l4))
	binary.LittleEndian.PutUint16(u.hdr[8:], csumOff)
	u.data = d
	return []unit{u}
}
