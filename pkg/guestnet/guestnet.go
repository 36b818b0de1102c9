// Package guestnet serves the network of one domain's guest: the vmchannel
// relay (pkg/vmchannel) and, on minivirt's own network, the TCP/IP stack
// (pkg/usernet) behind QEMU's NIC (a vhost-user device, or -netdev stream) and the
// host listeners of the inbound forwards. A domain's supervisor runs one
// for its QEMU; `minivirt network serve` runs one for a QEMU that libvirt
// starts, which may come and go. Every socket it listens on is made by
// pkg/unixsock, which never removes what minivirt did not make.
package guestnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/unixsock"
	"github.com/minivirt/minivirt/pkg/usernet"
	"github.com/minivirt/minivirt/pkg/vmchannel"
)

// ErrNotAttached is returned by DialGuest while no QEMU is attached.
var ErrNotAttached = errors.New("QEMU is not connected to the network")

// Network is one domain's guest network.
type Network struct {
	relay  *vmchannel.Relay
	ledger unixsock.Ledger
	mtu    uint32

	mu       sync.Mutex
	channels []domain.VMChannel // served now, in the order added
	stack    *usernet.Network   // the attached QEMU's stack; nil while none is
	nicDone  NICCounters        // the counters of the stacks detached so far
	forwards map[string]*forward
	// connects are the guest ports Connect has reached, each counted in
	// the relay as the inbound forward connectName(port).
	connects map[uint16]bool
}

// forward is one inbound forward's host listener.
type forward struct {
	cfg domain.Forward
	l   net.Listener
}

// New returns the network of d's vmchannels; its listeners are made through
// ledger. Nothing is served until Attach (the stack) and AddForward.
func New(d *domain.Domain, ledger unixsock.Ledger) *Network {
	channels := d.VMChannels()
	return &Network{
		relay:    vmchannel.New(vmchannel.Identity{Name: d.Name, UUID: d.UUID}, channels),
		ledger:   ledger,
		mtu:      d.NetstackMTU(),
		channels: channels,
		forwards: map[string]*forward{},
		connects: map[uint16]bool{},
	}
}

// Relay is the vmchannel relay, for guest connections that arrive another
// way (QEMU's user network hands them over a Unix socket).
func (n *Network) Relay() *vmchannel.Relay { return n.relay }

// Attach builds a fresh stack for QEMU's end of the network socket, conn,
// listening on every vmchannel served now, and returns the function that
// carries frames until conn closes or ctx ends (and then drops the stack).
// backend is what QEMU speaks on conn: vhost-user (conn is then a
// *net.UnixConn) or the stream of -netdev stream. logf reports what the
// guest gets wrong on a vhost-user device. One QEMU is attached at a time.
func (n *Network) Attach(conn net.Conn, backend domain.NetBackend, logf func(format string, args ...any)) (serve func(ctx context.Context) error, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stack != nil {
		return nil, errors.New("a QEMU is attached already")
	}
	var stack *usernet.Network
	var carry func(ctx context.Context) error
	switch backend {
	case domain.BackendVhostUser:
		uc, ok := conn.(*net.UnixConn)
		if !ok {
			return nil, fmt.Errorf("vhost-user needs a Unix socket, not %T", conn)
		}
		stack, err = usernet.NewVhostUser(slices.Clone(n.channels), n.mtu, n.relay.Handle)
		carry = func(ctx context.Context) error { return stack.ServeVhostUser(ctx, uc, logf) }
	case domain.BackendStream:
		stack, err = usernet.NewMTU(slices.Clone(n.channels), n.mtu, n.relay.Handle)
		carry = func(ctx context.Context) error { return stack.Serve(ctx, conn) }
	default:
		return nil, fmt.Errorf("network backend %q", backend)
	}
	if err != nil {
		return nil, err
	}
	n.stack = stack
	return func(ctx context.Context) error {
		err := carry(ctx)
		n.mu.Lock()
		if n.stack == stack {
			n.stack = nil
		}
		n.nicDone = n.nicDone.Add(stack.Counters())
		n.mu.Unlock()
		stack.Close()
		return err
	}, nil
}

// AddChannel starts serving a vmchannel: the guest's next connection to its
// address and port reaches its target.
func (n *Network) AddChannel(vc domain.VMChannel) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, c := range n.channels {
		if c.AddrPort() == vc.AddrPort() {
			return fmt.Errorf("vmchannel %s is served already", vc.AddrPort())
		}
	}
	n.relay.Add(vc)
	if n.stack != nil {
		if err := n.stack.AddChannel(vc); err != nil {
			n.relay.Remove(vc.AddrPort())
			return err
		}
	}
	n.channels = append(n.channels, vc)
	return nil
}

// RemoveChannel stops serving the vmchannel on ch: the guest's next
// connection there is refused; connections under way go on.
func (n *Network) RemoveChannel(ch netip.AddrPort) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.channels = slices.DeleteFunc(n.channels, func(c domain.VMChannel) bool { return c.AddrPort() == ch })
	if n.stack != nil {
		n.stack.RemoveChannel(ch)
	}
	n.relay.Remove(ch)
}

// DialGuest opens a connection from the gateway to the guest's TCP port,
// through the attached QEMU's stack.
func (n *Network) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	n.mu.Lock()
	stack := n.stack
	n.mu.Unlock()
	if stack == nil {
		return nil, ErrNotAttached
	}
	return stack.DialGuest(ctx, port)
}

// AddForward listens on a forward's host side (a TCP address, or a Unix
// socket made through the ledger) and relays each host connection to the
// guest's port.
func (n *Network) AddForward(f domain.Forward) error {
	name := f.Name()
	n.mu.Lock()
	_, dup := n.forwards[name]
	n.mu.Unlock()
	if dup {
		return fmt.Errorf("forward %s is served already", name)
	}
	var l net.Listener
	var err error
	if f.Path != "" {
		l, err = n.ledger.Listen(f.Path, 0o600)
	} else {
		l, err = net.Listen("tcp", f.Listen.String())
	}
	if err != nil {
		return fmt.Errorf("forward %s: %w", name, err)
	}
	n.relay.AddInbound(name, f.MaxConnections)
	n.mu.Lock()
	n.forwards[name] = &forward{cfg: f, l: l}
	n.mu.Unlock()
	port := f.GuestPort
	go n.relay.ServeInbound(l, name, func(ctx context.Context) (net.Conn, error) { return n.DialGuest(ctx, port) })
	return nil
}

// RemoveForward closes a forward's host side (a Unix socket's file goes
// with it); connections under way go on.
func (n *Network) RemoveForward(name string) {
	n.mu.Lock()
	f, ok := n.forwards[name]
	delete(n.forwards, name)
	n.mu.Unlock()
	if !ok {
		return
	}
	f.l.Close()
	n.relay.RemoveInbound(name)
}

// Connect opens a connection from the gateway to the guest's TCP port for
// one client that is not a forward's (`minivirt port connect`), and returns
// the function that relays between it and the client: it copies both ways,
// each end of stream passed on as a half-close, until both directions have
// ended, closes both, and must be called exactly once; called with a
// client connection that is closed already, it only releases the guest
// connection. Connections are counted, and limited to
// domain.DefaultMaxConnections at once, per guest port (Connects). The
// dial fails as DialGuest's does; ctx bounds it.
func (n *Network) Connect(ctx context.Context, port uint16) (relay func(client net.Conn), err error) {
	name := connectName(port)
	n.mu.Lock()
	if !n.connects[port] {
		n.connects[port] = true
		n.relay.AddInbound(name, domain.DefaultMaxConnections)
	}
	n.mu.Unlock()
	in, err := n.relay.AdmitInbound(name)
	if errors.Is(err, vmchannel.ErrLimit) {
		return nil, fmt.Errorf("%d connections to guest port %d are open already, the most it takes at once: %w", domain.DefaultMaxConnections, port, err)
	}
	if err != nil {
		return nil, err
	}
	guest, err := n.DialGuest(ctx, port)
	if err != nil {
		in.Refused()
		return nil, err
	}
	return func(client net.Conn) { in.Splice(guest, client) }, nil
}

// connectName is the relay's name for Connect's connections to a guest
// port; forwards are named "tcp:..." and "unix:...".
func connectName(port uint16) string { return fmt.Sprintf("connect:%d", port) }

// ConnectStatus counts Connect's connections to one guest port (BytesIn:
// guest to host).
type ConnectStatus struct {
	GuestPort      uint16 `json:"guest_port"`
	MaxConnections int    `json:"max_connections"`
	vmchannel.Counters
}

// Connects returns the counters of Connect's connections, by guest port,
// for every port it has reached.
func (n *Network) Connects() []ConnectStatus {
	n.mu.Lock()
	ports := make([]uint16, 0, len(n.connects))
	for p := range n.connects {
		ports = append(ports, p)
	}
	n.mu.Unlock()
	slices.Sort(ports)
	out := make([]ConnectStatus, 0, len(ports))
	for _, p := range ports {
		c, _ := n.relay.InboundCounters(connectName(p))
		out = append(out, ConnectStatus{GuestPort: p, MaxConnections: domain.DefaultMaxConnections, Counters: c})
	}
	return out
}

// NICCounters count the guest's frames on minivirt's own network, from the
// guest's point of view.
type NICCounters = usernet.NICCounters

// NIC returns the frames and bytes exchanged with every QEMU attached so
// far, the one attached now included.
func (n *Network) NIC() NICCounters {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := n.nicDone
	if n.stack != nil {
		c = c.Add(n.stack.Counters())
	}
	return c
}

// ChannelStatus is one vmchannel served, with its counters.
type ChannelStatus struct {
	domain.VMChannel
	vmchannel.Counters
}

// ForwardStatus is one inbound forward served, with its counters (BytesIn:
// guest to host).
type ForwardStatus struct {
	Forward domain.Forward `json:"forward"`
	vmchannel.Counters
}

// Channels returns the vmchannels served, in the order added, with their
// counters.
func (n *Network) Channels() []ChannelStatus {
	n.mu.Lock()
	channels := slices.Clone(n.channels)
	n.mu.Unlock()
	out := make([]ChannelStatus, 0, len(channels))
	for _, vc := range channels {
		c, _ := n.relay.Counters(vc.AddrPort())
		out = append(out, ChannelStatus{VMChannel: vc, Counters: c})
	}
	return out
}

// Forwards returns the forwards served, by name, with their counters.
func (n *Network) Forwards() []ForwardStatus {
	n.mu.Lock()
	var out []ForwardStatus
	for name, f := range n.forwards {
		c, _ := n.relay.InboundCounters(name)
		out = append(out, ForwardStatus{Forward: f.cfg, Counters: c})
	}
	n.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Forward.Name() < out[j].Forward.Name() })
	return out
}

// Leases are the addresses the attached stack's DHCP server handed out.
func (n *Network) Leases() []usernet.Lease {
	n.mu.Lock()
	stack := n.stack
	n.mu.Unlock()
	if stack == nil {
		return nil
	}
	return stack.Leases()
}

// RestoreLeases gives the attached stack the leases of a saved one
// (usernet.Network.RestoreLeases); without a stack it does nothing.
func (n *Network) RestoreLeases(ls []usernet.Lease) {
	n.mu.Lock()
	stack := n.stack
	n.mu.Unlock()
	if stack != nil {
		stack.RestoreLeases(ls)
	}
}

// Close stops serving: the forwards' listeners close and new guest
// connections are refused; connections under way go on until they end.
func (n *Network) Close() {
	n.mu.Lock()
	var names []string
	for name := range n.forwards {
		names = append(names, name)
	}
	n.mu.Unlock()
	for _, name := range names {
		n.RemoveForward(name)
	}
}
