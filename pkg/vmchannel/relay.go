// Package vmchannel relays guest connections to host Unix sockets, one host
// connection for every guest connection, with end-of-stream carried both
// ways. It is the only place where vmchannel bytes are copied.
//
// A guest connection reaches the Relay from QEMU's user network: QEMU runs
// minivirt's helper (RunHelper) for each guest connection (guestfwd cmd:),
// and the helper hands its connection to the supervisor over a Unix socket
// with SCM_RIGHTS (Handoff, Serve).
package vmchannel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/minivirt/minivirt/pkg/domain"
)

// TLV types of the PROXY v2 header that carry the domain's identity, from
// the range the protocol leaves to applications.
const (
	TLVDomainName = proxyproto.PP2_TYPE_MIN_CUSTOM     // 0xE0: the domain's name
	TLVDomainUUID = proxyproto.PP2_TYPE_MIN_CUSTOM + 1 // 0xE1: the domain's uuid
)

// DialTimeout bounds the dial of a channel's target: a guest connection to a
// target that does not answer is closed within it.
const DialTimeout = time.Second

// Identity names the domain in PROXY headers.
type Identity struct{ Name, UUID string }

// Counters are one channel's figures.
type Counters struct {
	Active   uint64 `json:"active"`
	Total    uint64 `json:"total"`
	Refused  uint64 `json:"refused"`
	BytesIn  uint64 `json:"bytes_in"`  // guest to host
	BytesOut uint64 `json:"bytes_out"` // host to guest
}

// meter limits and counts the connections of one channel or forward.
type meter struct {
	max                                       uint64
	active, total, refused, bytesIn, bytesOut atomic.Uint64
}

// admit counts a new connection and reports whether it is within the limit.
func (m *meter) admit() bool {
	m.total.Add(1)
	if m.active.Add(1) > m.max {
		m.active.Add(^uint64(0))
		m.refused.Add(1)
		return false
	}
	return true
}

type channel struct {
	cfg domain.VMChannel
	meter
}

// Relay copies guest connections to their channels' targets, and host
// connections of inbound forwards to the guest.
type Relay struct {
	id Identity
	wg sync.WaitGroup

	mu       sync.RWMutex
	channels map[netip.AddrPort]*channel
	inbound  map[string]*meter // by forward name
}

// New returns a relay for a domain's vmchannels.
func New(id Identity, channels []domain.VMChannel) *Relay {
	r := &Relay{id: id, channels: map[netip.AddrPort]*channel{}, inbound: map[string]*meter{}}
	for _, c := range channels {
		r.Add(c)
	}
	return r
}

// Add starts serving a channel; connections already on it go on.
func (r *Relay) Add(c domain.VMChannel) {
	if c.MaxConnections <= 0 {
		c.MaxConnections = domain.DefaultMaxConnections
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.channels[c.AddrPort()] = &channel{cfg: c, meter: meter{max: uint64(c.MaxConnections)}}
}

// Remove stops serving a channel: its next connection is refused; those
// under way go on.
func (r *Relay) Remove(ch netip.AddrPort) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.channels, ch)
}

// AddInbound starts counting and limiting an inbound forward.
func (r *Relay) AddInbound(name string, maxConnections int) {
	if maxConnections <= 0 {
		maxConnections = domain.DefaultMaxConnections
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inbound[name] = &meter{max: uint64(maxConnections)}
}

// RemoveInbound forgets an inbound forward; connections under way go on.
func (r *Relay) RemoveInbound(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inbound, name)
}

func (m *meter) counters() Counters {
	return Counters{Active: m.active.Load(), Total: m.total.Load(), Refused: m.refused.Load(),
		BytesIn: m.bytesIn.Load(), BytesOut: m.bytesOut.Load()}
}

// Counters returns the figures of the channel on addr:port.
func (r *Relay) Counters(ch netip.AddrPort) (Counters, bool) {
	r.mu.RLock()
	c, ok := r.channels[ch]
	r.mu.RUnlock()
	if !ok {
		return Counters{}, false
	}
	return c.counters(), true
}

// InboundCounters returns the figures of an inbound forward; BytesIn counts
// guest to host, as for vmchannels.
func (r *Relay) InboundCounters(name string) (Counters, bool) {
	r.mu.RLock()
	c, ok := r.inbound[name]
	r.mu.RUnlock()
	if !ok {
		return Counters{}, false
	}
	return c.counters(), true
}

// HandleInbound relays one host connection of an inbound forward to the
// guest, which dial reaches. It takes ownership of host and returns at once.
// A guest port nobody listens on closes the host connection at once.
func (r *Relay) HandleInbound(name string, host net.Conn, dial func(context.Context) (net.Conn, error)) error {
	in, err := r.AdmitInbound(name)
	if err != nil {
		host.Close()
		if errors.Is(err, ErrLimit) {
			return nil
		}
		return err
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), DialTimeout)
		guest, err := dial(ctx)
		cancel()
		if err != nil {
			host.Close()
			in.Refused()
			return
		}
		in.Splice(guest, host)
	}()
	return nil
}

// ErrLimit is returned by AdmitInbound when the inbound forward has as
// many connections as its limit allows.
var ErrLimit = errors.New("as many connections as the limit allows")

// Inbound is one host connection of an inbound forward that the forward's
// limit admitted: it counts as active, and the relay waits for it (Wait),
// until Refused or Splice ends it. Exactly one of them must be called.
type Inbound struct {
	r *Relay
	m *meter
}

// AdmitInbound counts a new connection of the inbound forward name and
// admits it within the forward's limit (else ErrLimit: it is counted as
// refused). The caller then dials the guest and ends the Inbound with
// Refused or Splice; in between it may answer the host, which HandleInbound
// does not.
func (r *Relay) AdmitInbound(name string) (*Inbound, error) {
	r.mu.RLock()
	m, ok := r.inbound[name]
	r.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("no inbound forward %s", name)
	}
	if !m.admit() {
		return nil, fmt.Errorf("inbound forward %s: %w (%d)", name, ErrLimit, m.max)
	}
	r.wg.Add(1)
	return &Inbound{r: r, m: m}, nil
}

// Refused ends a connection the guest did not take (its dial failed),
// counting it as refused.
func (in *Inbound) Refused() {
	in.m.refused.Add(1)
	in.done()
}

// Splice copies between guest and host, counting, with each end of stream
// passed on as a half-close, until both directions have ended; then it
// closes both and ends the connection.
func (in *Inbound) Splice(guest, host net.Conn) {
	defer in.done()
	defer host.Close()
	defer guest.Close()
	splice(guest, host, &in.m.bytesIn, &in.m.bytesOut)
}

func (in *Inbound) done() {
	in.m.active.Add(^uint64(0))
	in.r.wg.Done()
}

// Wait waits until every connection the relay took has ended.
func (r *Relay) Wait() { r.wg.Wait() }

// ErrUnknownChannel is returned for a connection to no configured channel.
var ErrUnknownChannel = errors.New("no such vmchannel")

// Handle relays one guest connection of the channel on ch, whose guest end is
// src (the zero AddrPort when unknown). It takes ownership of guest and
// returns at once; the copying runs in its own goroutines.
func (r *Relay) Handle(ch netip.AddrPort, guest net.Conn, src netip.AddrPort) error {
	r.mu.RLock()
	c, ok := r.channels[ch]
	r.mu.RUnlock()
	if !ok {
		guest.Close()
		return fmt.Errorf("%w: %s", ErrUnknownChannel, ch)
	}
	if !c.admit() {
		guest.Close()
		return nil
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer c.active.Add(^uint64(0))
		if !relay(guest, c.cfg, r.id, src, &c.bytesIn, &c.bytesOut) {
			c.refused.Add(1)
		}
	}()
	return nil
}

// Forward relays one guest connection without a Relay: no limit, no shared
// counters. The helper uses it when the supervisor cannot be reached. It
// reports false when the target refused the connection.
func Forward(guest net.Conn, cfg domain.VMChannel, id Identity, src netip.AddrPort) bool {
	var in, out atomic.Uint64
	return relay(guest, cfg, id, src, &in, &out)
}

// relay dials the target afresh and copies both ways until both directions
// have ended. It reports false when the target refused the connection.
func relay(guest net.Conn, cfg domain.VMChannel, id Identity, src netip.AddrPort, in, out *atomic.Uint64) bool {
	defer guest.Close()
	target, err := net.DialTimeout("unix", cfg.Path, DialTimeout)
	if err != nil {
		return false
	}
	defer target.Close()
	if cfg.Proxy == domain.ProxyV2 {
		if err := writeProxyHeader(target, id, src, netip.AddrPortFrom(cfg.Address, cfg.Port)); err != nil {
			return true
		}
	}
	splice(guest, target, in, out)
	return true
}

// splice copies both ways, guest to host counted in in and host to guest in
// out, passing each end of stream on as a half-close, until both directions
// have ended.
func splice(guest, host net.Conn, in, out *atomic.Uint64) {
	errs := make(chan error, 2)
	go func() { errs <- pipe(host, guest, in) }()
	go func() { errs <- pipe(guest, host, out) }()
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			// One direction failed: end the other at once.
			guest.Close()
			host.Close()
		}
	}
}

var buffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// pipe copies src to dst, counting, and passes src's end of stream on as a
// half-close of dst. It returns nil after a clean end of stream.
func pipe(dst, src net.Conn, count *atomic.Uint64) error {
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
			count.Add(uint64(n))
		}
		if rerr == io.EOF {
			return closeWrite(dst)
		}
		if rerr != nil {
			return rerr
		}
	}
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

func writeProxyHeader(w io.Writer, id Identity, src, dst netip.AddrPort) error {
	if !src.IsValid() {
		// QEMU's guestfwd does not tell the helper the guest's port: the
		// header carries the guest's address and port 0.
		src = netip.AddrPortFrom(domain.GuestAddress, 0)
	}
	h := proxyproto.HeaderProxyFromAddrs(2, net.TCPAddrFromAddrPort(src), net.TCPAddrFromAddrPort(dst))
	if err := h.SetTLVs([]proxyproto.TLV{
		{Type: TLVDomainName, Value: []byte(id.Name)},
		{Type: TLVDomainUUID, Value: []byte(id.UUID)},
	}); err != nil {
		return err
	}
	_, err := h.WriteTo(w)
	return err
}

// Serve accepts helper handoffs on l and relays each connection they pass,
// until ctx ends or l is closed.
func (r *Relay) Serve(ctx context.Context, l *net.UnixListener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go r.receive(c)
	}
}

// ServeInbound accepts host connections of the inbound forward name on l
// until l is closed, and relays each to the guest through dial.
func (r *Relay) ServeInbound(l net.Listener, name string, dial func(context.Context) (net.Conn, error)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		r.HandleInbound(name, c, dial)
	}
}
