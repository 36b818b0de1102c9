// Package usernet is minivirt's own user-mode network: a TCP/IP stack
// (gVisor's netstack) in the supervisor, on the other end of the socket QEMU
// uses as the guest's network backend. It is the gateway 10.0.2.2, hands
// out 10.0.2.15 by DHCP as QEMU's user network does, and accepts TCP
// connections on every vmchannel's address and port, each passed to a
// handler (the vmchannel relay). It has no NAT, no DNS and no route
// anywhere else: other TCP gets a reset, everything else is dropped. No
// process runs per guest connection.
package usernet

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/containers/gvisor-tap-vsock/pkg/services/dhcp"
	"github.com/containers/gvisor-tap-vsock/pkg/tap"
	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/minivirt/minivirt/pkg/domain"
)

// Addresses of the network, as QEMU's user network has them.
var (
	Gateway = netip.MustParseAddr("10.0.2.2")
	Guest   = netip.MustParseAddr("10.0.2.15")
)

// gatewayMAC is the stack's own link address (a locally administered one).
const gatewayMAC = "5a:94:ef:e4:0c:dd"

// DefaultMTU is the link's MTU, the same as QEMU's user network.
const DefaultMTU = 1500

// Handler takes one accepted guest connection of the vmchannel on ch; src
// is the guest's address and port.
type Handler func(ch netip.AddrPort, conn net.Conn, src netip.AddrPort) error

// Network is one domain's user network.
type Network struct {
	stack     *stack.Stack
	sw        *tap.Switch
	listeners []net.Listener
	wg        sync.WaitGroup
}

// New builds the network for a domain's vmchannels and starts accepting on
// each; connections go to handle.
func New(channels []domain.VMChannel, mtu int, handle Handler) (*Network, error) {
	if mtu == 0 {
		mtu = DefaultMTU
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	// Bound what one connection may buffer: a guest that floods a channel
	// whose host service does not read meets TCP's flow control, not an
	// ever-growing supervisor.
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 64 << 10, Max: 256 << 10}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 64 << 10, Max: 256 << 10}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return nil, fmt.Errorf("netstack: %v", err)
	}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return nil, fmt.Errorf("netstack: %v", err)
	}

	var addrs []string
	seen := map[netip.Addr]bool{}
	for _, c := range channels {
		if !seen[c.Address] {
			seen[c.Address] = true
			addrs = append(addrs, c.Address.String())
		}
	}
	// The endpoint answers ARP only for the gateway and the declared
	// addresses: every vmchannel address is declared.
	ep, err := tap.NewLinkEndpoint(false, uint32(mtu), gatewayMAC, Gateway.String(), addrs)
	if err != nil {
		return nil, fmt.Errorf("netstack: %w", err)
	}
	sw := tap.NewSwitch(false)
	sw.Connect(ep)
	ep.Connect(sw)
	const nic = 1
	if err := s.CreateNIC(nic, ep); err != nil {
		return nil, fmt.Errorf("netstack: %v", err)
	}
	for _, a := range append([]netip.Addr{Gateway}, keys(seen)...) {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddrFrom4(a.As4()).WithPrefix()}
		pa.AddressWithPrefix.PrefixLen = domain.UserNet.Bits()
		if err := s.AddProtocolAddress(nic, pa, stack.AddressProperties{}); err != nil {
			return nil, fmt.Errorf("netstack: address %s: %v", a, err)
		}
	}
	subnet, _ := tcpip.NewSubnet(tcpip.AddrFrom4(domain.UserNet.Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(domain.UserNet.Bits(), 32)))
	s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: nic}})

	n := &Network{stack: s, sw: sw}
	if err := n.dhcp(mtu); err != nil {
		n.Close()
		return nil, err
	}
	for _, c := range channels {
		ch := netip.AddrPortFrom(c.Address, c.Port)
		l, err := gonet.ListenTCP(s, tcpip.FullAddress{NIC: nic, Addr: tcpip.AddrFrom4(c.Address.As4()), Port: c.Port}, ipv4.ProtocolNumber)
		if err != nil {
			n.Close()
			return nil, fmt.Errorf("netstack: listening on %s: %v", ch, err)
		}
		n.listeners = append(n.listeners, l)
		n.wg.Add(1)
		go n.accept(l, ch, handle)
	}
	return n, nil
}

func keys(m map[netip.Addr]bool) []netip.Addr {
	var out []netip.Addr
	for k := range m {
		out = append(out, k)
	}
	return out
}

// dhcp serves 10.0.2.15 (the first lease) as QEMU's user network would.
func (n *Network) dhcp(mtu int) error {
	_, subnet, _ := net.ParseCIDR(domain.UserNet.String())
	pool := tap.NewIPPool(subnet)
	// Leases start at .15 like libslirp's: hold the addresses below it.
	for i := 0; i < 15; i++ {
		ip := Guest.As4()
		ip[3] = byte(i)
		pool.Reserve(net.IP(ip[:]), fmt.Sprintf("reserved-%d", i))
	}
	srv, err := dhcp.New(&types.Configuration{Subnet: domain.UserNet.String(), GatewayIP: Gateway.String(), MTU: mtu}, n.stack, pool)
	if err != nil {
		return fmt.Errorf("netstack: DHCP: %w", err)
	}
	go srv.Serve()
	return nil
}

func (n *Network) accept(l net.Listener, ch netip.AddrPort, handle Handler) {
	defer n.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		var src netip.AddrPort
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			src = a.AddrPort()
			src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		}
		handle(ch, c, src)
	}
}

// Serve carries the guest's frames on conn (QEMU's end of a stream socket,
// frames prefixed by their 4-byte big-endian length) until conn closes or
// ctx ends.
func (n *Network) Serve(ctx context.Context, conn net.Conn) error {
	return n.sw.Accept(ctx, conn, types.QemuProtocol)
}

// Close stops accepting and tears the stack down.
func (n *Network) Close() {
	for _, l := range n.listeners {
		l.Close()
	}
	n.wg.Wait()
	n.stack.Close()
}
