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
	"slices"
	"sync"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/minivirt/minivirt/pkg/domain"
)

// gatewayMAC is the stack's own link address (a locally administered one,
// as QEMU's user network uses 52:55:0a:00:02:02).
var gatewayMAC = tcpip.LinkAddress([]byte{0x52, 0x55, 0x0a, 0x00, 0x02, 0x02})

// MTU is the link's MTU. QEMU's virtio-net device announces it to the guest
// (host_mtu), and large frames cut the per-packet work of an emulated guest.
const MTU = 65520

// Handler takes one accepted guest connection of the vmchannel on ch, a
// *Conn; src is the guest's address and port.
type Handler func(ch netip.AddrPort, conn net.Conn, src netip.AddrPort) error

// Network is one domain's user network.
//
// The guest is not trusted: whatever it sends, what the network holds for
// it is bounded. Its DHCP and ARP frames are rate-limited before the stack
// parses them (admission), the DHCP server answers one message at a time,
// it remembers at most maxLeases leases, a listener holds at most
// listenBacklog half-open connections (SYN cookies beyond), and gVisor
// bounds the rest (neighbour cache, fragment reassembly, receive buffers).
type Network struct {
	stack *stack.Stack
	link  *channel.Endpoint
	dhcp  *dhcpServer
	admit *admission
	wg    sync.WaitGroup
	// counters count the frames Serve carries.
	counters linkCounters

	mu       sync.Mutex
	leases   leaseTable
	handle   Handler
	channels map[netip.AddrPort]*listener // the stack's listeners, by channel
	addrs    map[netip.Addr]bool          // addresses the NIC answers for
}

// nic is the network's one NIC.
const nic = 1

// New builds the network for a domain's vmchannels and starts accepting on
// each; connections go to handle.
func New(channels []domain.VMChannel, handle Handler) (*Network, error) {
	return NewMTU(channels, MTU, handle)
}

// NewMTU is New with a link MTU other than MTU; QEMU's device must announce
// the same (host_mtu).
func NewMTU(channels []domain.VMChannel, mtu uint32, handle Handler) (*Network, error) {
	return newNetwork(channels, mtu, false, handle)
}

// NewVhostUser is NewMTU for a network served by ServeVhostUser: its link
// takes the offloads a vhost-user device offers (checksums left to the
// receiver, TCP segments over the MTU both ways).
func NewVhostUser(channels []domain.VMChannel, mtu uint32, handle Handler) (*Network, error) {
	return newNetwork(channels, mtu, true, handle)
}

func newNetwork(channels []domain.VMChannel, mtu uint32, offload bool, handle Handler) (*Network, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	// Bound what one connection may buffer: a guest that floods a channel
	// whose host service does not read meets TCP's flow control, not an
	// ever-growing supervisor. A connection's receive window starts small,
	// as an idle one needs, and grows to Max with its traffic (moderation,
	// below), as a bulk one needs.
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 64 << 10, Max: 1 << 20}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 256 << 10, Max: 1 << 20}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv); err != nil {
		return nil, fmt.Errorf("netstack: %v", err)
	}
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd); err != nil {
		return nil, fmt.Errorf("netstack: %v", err)
	}
	moderate := tcpip.TCPModerateReceiveBufferOption(true) // grow the window within Max as the stream warrants
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &moderate); err != nil {
		return nil, fmt.Errorf("netstack: %v", err)
	}

	// gVisor answers ARP for every address of the NIC: the gateway and
	// each vmchannel address.
	addrs := []netip.Addr{domain.GatewayAddress}
	for _, c := range channels {
		if !slices.Contains(addrs, c.Address) {
			addrs = append(addrs, c.Address)
		}
	}
	link := channel.New(1024, mtu, gatewayMAC)
	var nicLink stack.LinkEndpoint = link
	if offload {
		nicLink = offloadLink(link)
	}
	if err := s.CreateNIC(nic, ethernet.New(nicLink)); err != nil {
		return nil, fmt.Errorf("netstack: %v", err)
	}
	for _, a := range addrs {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
			AddressWithPrefix: tcpip.AddrFrom4(a.As4()).WithPrefix()}
		pa.AddressWithPrefix.PrefixLen = domain.UserNet.Bits()
		if err := s.AddProtocolAddress(nic, pa, stack.AddressProperties{}); err != nil {
			return nil, fmt.Errorf("netstack: address %s: %v", a, err)
		}
	}
	subnet, _ := tcpip.NewSubnet(tcpip.AddrFrom4(domain.UserNet.Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(domain.UserNet.Bits(), 32)))
	s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: nic}})

	n := &Network{stack: s, link: link, admit: newAdmission(), handle: handle,
		leases: newLeaseTable(maxLeases), channels: map[netip.AddrPort]*listener{}, addrs: map[netip.Addr]bool{}}
	for _, a := range addrs {
		n.addrs[a] = true
	}
	var err error
	if n.dhcp, err = serveDHCP(s, nic, uint16(mtu), n.lease); err != nil {
		n.Close()
		return nil, fmt.Errorf("netstack: DHCP: %w", err)
	}
	for _, c := range channels {
		if err := n.AddChannel(c); err != nil {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

// AddChannel starts listening on a vmchannel's address and port while the
// network runs: the guest's next connection there reaches the handler.
func (n *Network) AddChannel(c domain.VMChannel) error {
	ch := netip.AddrPortFrom(c.Address, c.Port)
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.channels[ch]; ok {
		return fmt.Errorf("netstack: %s is served already", ch)
	}
	if !n.addrs[c.Address] {
		pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom4(c.Address.As4()).WithPrefix()}
		pa.AddressWithPrefix.PrefixLen = domain.UserNet.Bits()
		if err := n.stack.AddProtocolAddress(nic, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("netstack: address %s: %v", c.Address, err)
		}
		n.addrs[c.Address] = true
	}
	l, err := listen(n.stack, tcpip.FullAddress{NIC: nic, Addr: tcpip.AddrFrom4(c.Address.As4()), Port: c.Port})
	if err != nil {
		return fmt.Errorf("netstack: listening on %s: %w", ch, err)
	}
	n.channels[ch] = l
	n.wg.Add(1)
	go n.accept(l, ch, n.handle)
	return nil
}

// RemoveChannel stops listening on a vmchannel: the guest's next connection
// there is refused; connections under way go on.
func (n *Network) RemoveChannel(ch netip.AddrPort) {
	n.mu.Lock()
	l, ok := n.channels[ch]
	delete(n.channels, ch)
	n.mu.Unlock()
	if ok {
		l.Close()
	}
}

// DialGuest opens a TCP connection from the gateway to the guest's port, for
// an inbound forward or `port connect`; the connection has CloseWrite, a
// half-close. A port nobody listens on is refused at once: the error wraps
// syscall.ECONNREFUSED. A guest that does not answer ARP for its address
// (no guest, or its network is not up) fails after the stack's neighbour
// probes, about three seconds, wrapping syscall.EHOSTUNREACH; ctx bounds
// the wait.
func (n *Network) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	to := tcpip.FullAddress{NIC: nic, Addr: tcpip.AddrFrom4(domain.GuestAddress.As4()), Port: port}
	fail := func(err error) error {
		return &net.OpError{Op: "dial", Net: "tcp", Addr: &net.TCPAddr{IP: domain.GuestAddress.AsSlice(), Port: int(port)}, Err: err}
	}
	var wq waiter.Queue
	ep, terr := n.stack.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil, fail(errorOf(terr))
	}
	entry, connected := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	terr = ep.Connect(to)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, fail(ctx.Err())
		case <-connected:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, fail(errnoOf(terr))
	}
	return newConn(&wq, ep), nil
}

// errnoOf turns the errors of a connect into the errno a host socket's
// connect would fail with, so that callers test them with errors.Is.
func errnoOf(e tcpip.Error) error {
	switch e.(type) {
	case *tcpip.ErrConnectionRefused:
		return syscall.ECONNREFUSED
	case *tcpip.ErrHostUnreachable:
		return syscall.EHOSTUNREACH
	case *tcpip.ErrNetworkUnreachable:
		return syscall.ENETUNREACH
	case *tcpip.ErrTimeout:
		return syscall.ETIMEDOUT
	case *tcpip.ErrConnectionReset:
		return syscall.ECONNRESET
	}
	return errorOf(e)
}

// listenBacklog bounds the connections a vmchannel's listener holds
// half-open (SYN received, SYN-ACK sent) or accepted but not yet taken.
// Each half-open one is a whole TCP endpoint, kept for the minute or more
// its SYN-ACK is retransmitted, so a guest sending SYNs it never completes
// makes the listener hold as many as the backlog allows (20,000 SYNs to
// one listener grew the heap by 25 MiB with gonet.ListenTCP's 4096, by
// 10 MiB, mostly gVisor's buffer pools, with this backlog).
// Past the backlog gVisor answers SYNs with SYN cookies, which hold
// nothing. A guest's real handshakes take a round trip and the handler
// takes each accepted connection at once, so it would have to open more
// than this many at the same moment to meet the bound, and even then
// those connect, by cookie, only without window scaling.
const listenBacklog = 128

// listen is gonet.ListenTCP with a backlog of listenBacklog, and accepts
// Conns.
func listen(s *stack.Stack, addr tcpip.FullAddress) (*listener, error) {
	var wq waiter.Queue
	ep, terr := s.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil, errorOf(terr)
	}
	if terr := ep.Bind(addr); terr != nil {
		ep.Close()
		return nil, errorOf(terr)
	}
	if terr := ep.Listen(listenBacklog); terr != nil {
		ep.Close()
		return nil, errorOf(terr)
	}
	return &listener{ep: ep, wq: &wq, closed: make(chan struct{})}, nil
}

// accept passes each connection l accepts to handle, as a *Conn, until l
// is closed.
func (n *Network) accept(l *listener, ch netip.AddrPort, handle Handler) {
	defer n.wg.Done()
	for {
		c, err := l.accept()
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
	return serveFrames(ctx, n.link, conn, n.admit.admit, &n.counters)
}

// Lease is an address the network's DHCP server handed out.
type Lease struct {
	MAC     string
	Address netip.Prefix
}

func (n *Network) lease(l Lease) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.leases.add(l)
}

// RestoreLeases takes back leases a saved network handed out (Leases), in
// their order, as if acknowledged now: a restored guest keeps its address
// and domifaddr finds it. Beyond maxLeases, the oldest are forgotten.
func (n *Network) RestoreLeases(ls []Lease) {
	for _, l := range ls {
		n.lease(l)
	}
}

// Leases returns the addresses the network's DHCP server handed out, at
// most maxLeases of them, the least recently acknowledged first.
func (n *Network) Leases() []Lease {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.leases.list()
}

// maxLeases bounds the leases a network remembers. Its one guest needs one,
// a few if it changes its MAC address or runs more than one DHCP client;
// any more are a guest making MAC addresses up, and remembering them all
// would let it grow the supervisor, and every domifaddr, without bound.
const maxLeases = 4

// leaseTable is the leases a network remembers, by MAC address, the least
// recently acknowledged forgotten first once it holds its most.
type leaseTable struct {
	limit int
	byMAC map[string]netip.Prefix
	order []string // MAC addresses, the least recently acknowledged first
}

func newLeaseTable(limit int) leaseTable {
	return leaseTable{limit: limit, byMAC: make(map[string]netip.Prefix, limit), order: make([]string, 0, limit)}
}

// add remembers l, the most recently acknowledged lease; its MAC address's
// earlier lease, or else the least recently acknowledged one when the
// table is full, is forgotten. It takes a time bounded by the table's
// limit, not by how many leases the guest has asked for.
func (t *leaseTable) add(l Lease) {
	if _, ok := t.byMAC[l.MAC]; ok {
		t.order = slices.DeleteFunc(t.order, func(mac string) bool { return mac == l.MAC })
	} else if len(t.order) == t.limit {
		delete(t.byMAC, t.order[0])
		t.order = slices.Delete(t.order, 0, 1) // in place: order keeps its capacity
	}
	t.byMAC[l.MAC] = l.Address
	t.order = append(t.order, l.MAC)
}

// list returns the leases, the least recently acknowledged first.
func (t *leaseTable) list() []Lease {
	out := make([]Lease, 0, len(t.order))
	for _, mac := range t.order {
		out = append(out, Lease{MAC: mac, Address: t.byMAC[mac]})
	}
	return out
}

// Close stops accepting and tears the stack down.
func (n *Network) Close() {
	n.mu.Lock()
	for ch, l := range n.channels {
		l.Close()
		delete(n.channels, ch)
	}
	n.mu.Unlock()
	n.wg.Wait()
	if n.dhcp != nil {
		n.dhcp.Close()
	}
	n.stack.Close()
}

// errorOf turns a tcpip.Error into an error.
func errorOf(e tcpip.Error) error { return fmt.Errorf("netstack: %s", e) }
