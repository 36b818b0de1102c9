package usernet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// QEMU's stream netdev carries each Ethernet frame behind its length, a
// 4-byte big-endian number.
const lengthPrefix = 4

// maxFrame bounds a frame read from QEMU (an MTU of 65535 plus the header).
const maxFrame = 65535 + 14

// classifyPrefix is as much of a frame as classify reads: the Ethernet
// header, the longest IPv4 header and a UDP header.
const classifyPrefix = header.EthernetMinimumSize + header.IPv4MaximumHeaderSize + header.UDPMinimumSize

// serveFrames moves frames between the stack's link endpoint and conn until
// conn fails or ctx ends: inbound frames that admit takes are injected into
// the stack as they are (the ethernet endpoint above parses their header),
// the others are dropped; outbound packets are written whole, headers
// included.
func serveFrames(ctx context.Context, ep *channel.Endpoint, conn net.Conn, admit func(frame []byte) bool, count *linkCounters) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	txErr := make(chan error, 1)
	go func() { txErr <- transmit(ctx, ep, conn, count) }()
	rxErr := receive(ep, conn, admit, count)
	cancel()
	if err := <-txErr; rxErr == nil {
		rxErr = err
	}
	if errors.Is(rxErr, io.EOF) || errors.Is(rxErr, net.ErrClosed) {
		return nil
	}
	return rxErr
}

// receive reads the guest's frames from conn into the stack. It decides on
// each frame from its first bytes, before it allocates for it: a frame
// admit drops costs no more than reading it, however many the guest sends.
// Every frame read whole is counted, dropped or not.
func receive(ep *channel.Endpoint, conn net.Conn, admit func(frame []byte) bool, count *linkCounters) error {
	var prefix [lengthPrefix]byte
	var head [classifyPrefix]byte
	for {
		if _, err := io.ReadFull(conn, prefix[:]); err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(prefix[:])
		if n > maxFrame {
			return fmt.Errorf("frame of %d bytes from QEMU", n)
		}
		h := head[:min(n, classifyPrefix)]
		if _, err := io.ReadFull(conn, h); err != nil {
			return err
		}
		if !admit(h) {
			if _, err := io.CopyN(io.Discard, conn, int64(n)-int64(len(h))); err != nil {
				return err
			}
			count.fromGuest(n)
			continue
		}
		frame := make([]byte, n)
		copy(frame, h)
		if _, err := io.ReadFull(conn, frame[len(h):]); err != nil {
			return err
		}
		count.fromGuest(n)
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		ep.InjectInbound(0, pkt) // the protocol comes from the Ethernet header
		pkt.DecRef()
	}
}

// transmit writes the stack's packets to conn, counting each written whole.
func transmit(ctx context.Context, ep *channel.Endpoint, conn net.Conn, count *linkCounters) error {
	for {
		pkt := ep.ReadContext(ctx)
		if pkt == nil {
			return ctx.Err()
		}
		view := pkt.ToView()
		frame := make([]byte, lengthPrefix+view.Size())
		binary.BigEndian.PutUint32(frame, uint32(view.Size()))
		copy(frame[lengthPrefix:], view.AsSlice())
		view.Release()
		pkt.DecRef()
		if _, err := conn.Write(frame); err != nil {
			return err
		}
		count.toGuest(len(frame) - lengthPrefix)
	}
}
