package usernet

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// QEMU's stream netdev carries each Ethernet frame behind its length, a
// 4-byte big-endian number.
const lengthPrefix = 4

// maxFrame bounds a frame read from QEMU (an MTU of 65535 plus the header).
const maxFrame = 65535 + 14

// serveFrames moves frames between the stack's link endpoint and conn until
// conn fails or ctx ends: inbound frames are injected into the stack as
// they are (the ethernet endpoint above parses their header), outbound
// packets are written whole, headers included.
func serveFrames(ctx context.Context, ep *channel.Endpoint, conn net.Conn) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	txErr := make(chan error, 1)
	go func() { txErr <- transmit(ctx, ep, conn) }()
	rxErr := receive(ep, conn)
	cancel()
	if err := <-txErr; rxErr == nil {
		rxErr = err
	}
	if errors.Is(rxErr, io.EOF) || errors.Is(rxErr, net.ErrClosed) {
		return nil
	}
	return rxErr
}

func receive(ep *channel.Endpoint, conn net.Conn) error {
	var prefix [lengthPrefix]byte
	for {
		if _, err := io.ReadFull(conn, prefix[:]); err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(prefix[:])
		if n > maxFrame {
			return fmt.Errorf("frame of %d bytes from QEMU", n)
		}
		frame := make([]byte, n)
		if _, err := io.ReadFull(conn, frame); err != nil {
			return err
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		ep.InjectInbound(0, pkt) // the protocol comes from the Ethernet header
		pkt.DecRef()
	}
}

func transmit(ctx context.Context, ep *channel.Endpoint, conn net.Conn) error {
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
	}
}
