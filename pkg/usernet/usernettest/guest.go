// Package usernettest plays the guest on QEMU's end of minivirt's user
// network, for tests that need a guest's TCP without a VM: a gVisor stack
// of its own at the guest's address (10.0.2.15, set statically: it sends
// no DHCP), which answers ARP, accepts on the ports its caller listens on,
// and resets connections to every other port, as a guest's kernel does.
package usernettest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/minivirt/minivirt/pkg/domain"
)

// MAC is the guest's link address: QEMU's default for its first NIC.
var MAC = tcpip.LinkAddress([]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56})

// Guest is one running guest stack.
type Guest struct {
	stack  *stack.Stack
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu  sync.Mutex
	err error // why the link ended, once it has
}

const nicID = 1

// Start runs a guest on conn, QEMU's end of the network socket (each
// Ethernet frame behind its length, a 4-byte big-endian number), with a
// link of mtu bytes (the network's; QEMU announces it as host_mtu). The
// guest runs until Close, or until conn fails or is closed.
func Start(conn net.Conn, mtu uint32) (*Guest, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	link := channel.New(256, mtu, MAC)
	if err := s.CreateNIC(nicID, ethernet.New(link)); err != nil {
		return nil, fmt.Errorf("guest stack: %v", err)
	}
	addr := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddressWithPrefix{
		Address: tcpip.AddrFrom4(domain.GuestAddress.As4()), PrefixLen: domain.UserNet.Bits()}}
	if err := s.AddProtocolAddress(nicID, addr, stack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("guest stack: %v", err)
	}
	subnet, err := tcpip.NewSubnet(tcpip.AddrFrom4(domain.UserNet.Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(domain.UserNet.Bits(), 32)))
	if err != nil {
		return nil, fmt.Errorf("guest stack: %v", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: nicID}})
	ctx, cancel := context.WithCancel(context.Background())
	g := &Guest{stack: s, cancel: cancel}
	context.AfterFunc(ctx, func() { conn.Close() })
	g.wg.Add(2)
	go func() { defer g.wg.Done(); g.end(toLink(link, conn)); cancel() }()
	go func() { defer g.wg.Done(); g.end(fromLink(ctx, link, conn)); cancel() }()
	return g, nil
}

// Listen accepts TCP connections to the guest's port; each has CloseWrite.
func (g *Guest) Listen(port uint16) (net.Listener, error) {
	return gonet.ListenTCP(g.stack, tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(domain.GuestAddress.As4()), Port: port}, ipv4.ProtocolNumber)
}

// Dial opens a TCP connection from the guest to addr, as a guest's
// process connecting to a vmchannel does; it has CloseWrite. ctx bounds the
// handshake.
func (g *Guest) Dial(ctx context.Context, addr netip.AddrPort) (*gonet.TCPConn, error) {
	to := tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(addr.Addr().As4()), Port: addr.Port()}
	c, err := gonet.DialContextTCP(ctx, g.stack, to, ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("guest: dialing %s: %w", addr, err)
	}
	return c, nil
}

// Err says why the link ended: nil while it runs, and after Close or a
// clean end of conn.
func (g *Guest) Err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

func (g *Guest) end(err error) {
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, context.Canceled) {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err == nil {
		g.err = err
	}
}

// Close ends the link (closing conn) and tears the stack down.
func (g *Guest) Close() {
	g.cancel()
	g.wg.Wait()
	g.stack.Close()
}

// toLink injects the network's frames, read from conn, into the stack.
func toLink(link *channel.Endpoint, conn net.Conn) error {
	for {
		var size uint32
		if err := binary.Read(conn, binary.BigEndian, &size); err != nil {
			return err
		}
		frame := make([]byte, size)
		if _, err := io.ReadFull(conn, frame); err != nil {
			return err
		}
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
		link.InjectInbound(0, pkt)
		pkt.DecRef()
	}
}

// fromLink writes the stack's frames to conn, each behind its length.
func fromLink(ctx context.Context, link *channel.Endpoint, conn net.Conn) error {
	for pkt := link.ReadContext(ctx); pkt != nil; pkt = link.ReadContext(ctx) {
		view := pkt.ToView()
		out := binary.BigEndian.AppendUint32(make([]byte, 0, 4+view.Size()), uint32(view.Size()))
		out = append(out, view.AsSlice()...)
		view.Release()
		pkt.DecRef()
		if _, err := conn.Write(out); err != nil {
			return err
		}
	}
	return ctx.Err()
}
