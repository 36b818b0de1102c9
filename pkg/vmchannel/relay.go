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
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

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
	id      Identity
	wg      sync.WaitGroup
	buffers *bufferPool

	mu       sync.RWMutex
	channels map[netip.AddrPort]*channel
	inbound  map[string]*meter // by forward name
}

// New returns a relay for a domain's vmchannels.
func New(id Identity, channels []domain.VMChannel) *Relay {
	r := &Relay{id: id, buffers: newBufferPool(), channels: map[netip.AddrPort]*channel{}, inbound: map[string]*meter{}}
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
	in.r.buffers.splice(guest, host, &in.m.bytesIn, &in.m.bytesOut)
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
		if !relay(r.buffers, guest, c.cfg, r.id, src, &c.bytesIn, &c.bytesOut) {
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
	return relay(newBufferPool(), guest, cfg, id, src, &in, &out)
}

// relay dials the target afresh and copies both ways until both directions
// have ended. It reports false when the target refused the connection.
func relay(buffers *bufferPool, guest net.Conn, cfg domain.VMChannel, id Identity, src netip.AddrPort, in, out *atomic.Uint64) bool {
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
	buffers.splice(guest, target, in, out)
	return true
}

// bufferSize is the size of the buffers bytes are copied through.
const bufferSize = 64 << 10

// bufferPool lends copy buffers to connections while their bytes move: an
// idle connection holds none.
type bufferPool struct{ pool sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{pool: sync.Pool{New: func() any { b := make([]byte, bufferSize); return &b }}}
}

// splice copies both ways, guest to host counted in in and host to guest in
// out, passing each end of stream on as a half-close, until both directions
// have ended. One direction runs in a goroutine of its own, the other in
// the caller's.
func (p *bufferPool) splice(guest, host net.Conn, in, out *atomic.Uint64) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// One direction failed: end the other at once.
	fail := func() {
		cancel()
		guest.Close()
		host.Close()
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := p.pipe(ctx, host, guest, in); err != nil {
			fail()
		}
	}()
	if err := p.pipe(ctx, guest, host, out); err != nil {
		fail()
	}
	<-done
}

// pipe copies src to dst, counting, and passes src's end of stream on as a
// half-close of dst. It returns nil after a clean end of stream, ctx's
// error when ctx ends first. While src has nothing to read, it holds no
// buffer: it waits for src to be readable, then borrows a buffer for as
// long as src has bytes ready. A src that cannot wait so (neither an
// idleReader nor a socket) holds its buffer throughout.
func (p *bufferPool) pipe(ctx context.Context, dst, src net.Conn, count *atomic.Uint64) error {
	r := idleReaderOf(src)
	if r == nil {
		return p.copy(dst, src, count)
	}
	for {
		if err := r.WaitRead(ctx); err != nil {
			return err
		}
		eof, err := p.drain(dst, r, count)
		if err != nil {
			return err
		}
		if eof {
			return closeWrite(dst)
		}
	}
}

// drain copies what src has ready to dst through a borrowed buffer, and
// gives the buffer back once src would wait. It reports src's end of
// stream.
func (p *bufferPool) drain(dst io.Writer, src idleReader, count *atomic.Uint64) (eof bool, err error) {
	bp := p.pool.Get().(*[]byte)
	defer p.pool.Put(bp)
	buf := *bp
	for {
		n, rerr := src.ReadNow(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return false, err
			}
			count.Add(uint64(n))
		}
		switch {
		case rerr == io.EOF:
			return true, nil
		case rerr != nil:
			return false, rerr
		case n == 0:
			return false, nil
		}
	}
}

// copy is pipe for a src that cannot wait without a buffer: it holds one
// across its blocking reads.
func (p *bufferPool) copy(dst, src net.Conn, count *atomic.Uint64) error {
	bp := p.pool.Get().(*[]byte)
	defer p.pool.Put(bp)
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

// An idleReader is a connection that can wait for bytes without a buffer
// and then read only what is there: usernet.Conn, and sockets through
// rawReader.
type idleReader interface {
	// WaitRead waits until a read would not wait (bytes, the end of
	// stream or an error are there) or ctx ends. It reads nothing.
	WaitRead(ctx context.Context) error
	// ReadNow reads what is there into p without waiting: 0 and a nil
	// error when nothing is, io.EOF at the end of stream.
	ReadNow(p []byte) (int, error)
}

// idleReaderOf returns c as an idleReader, or nil when it cannot be one.
func idleReaderOf(c net.Conn) idleReader {
	if r, ok := c.(idleReader); ok {
		return r
	}
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return &rawReader{conn: c, rc: rc}
		}
	}
	return nil
}

// rawReader is an idleReader for a connection with a descriptor (a Unix or
// TCP socket): it waits in Go's poller and reads with a non-blocking read.
type rawReader struct {
	conn net.Conn
	rc   syscall.RawConn
}

// aLongTimeAgo is a read deadline that has passed: it ends a wait at once.
var aLongTimeAgo = time.Unix(1, 0)

// WaitRead waits in Go's poller for the descriptor to be readable; it ends
// with an error when the connection is closed or its read deadline passes.
// When ctx ends first it sets that deadline in the past, ending the
// connection's reads for good, and returns ctx's error.
func (r *rawReader) WaitRead(ctx context.Context) error {
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { r.conn.SetReadDeadline(aLongTimeAgo) })
		defer stop()
	}
	var perr error
	err := r.rc.Read(func(fd uintptr) bool {
		// Called at once, then again each time the poller says the
		// descriptor became readable: report whether it is, so that Read
		// returns, or else waits for the poller.
		for {
			fds := [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds[:], 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				perr = os.NewSyscallError("poll", err)
				return true
			}
			return n > 0
		}
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("waiting to read: %w", err)
	}
	return perr
}

// ReadNow reads what the descriptor holds, without waiting.
func (r *rawReader) ReadNow(p []byte) (int, error) {
	var n int
	var rerr error
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = unix.Read(int(fd), p)
			if rerr != unix.EINTR {
				return true
			}
		}
	})
	switch {
	case err != nil:
		return 0, fmt.Errorf("reading: %w", err)
	case rerr == unix.EAGAIN:
		return 0, nil
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
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
