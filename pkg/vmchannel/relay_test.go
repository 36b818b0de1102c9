package vmchannel

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/domain"
)

var testChannel = netip.MustParseAddrPort("10.0.2.4:600")

// socketPair returns two connected stream sockets standing in for the
// guest's connection: the relay gets one end, the test plays the guest.
func socketPair(t testing.TB) (relayEnd, guestEnd *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// target listens on a fresh socket path and hands each accepted connection
// to serve.
func target(t testing.TB, path string, serve func(net.Conn)) net.Listener {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go serve(c)
		}
	}()
	return l
}

func newRelay(t testing.TB, path string, tweak func(*domain.VMChannel)) *Relay {
	vc := domain.VMChannel{Address: testChannel.Addr(), Port: testChannel.Port(), Path: path, MaxConnections: 8}
	if tweak != nil {
		tweak(&vc)
	}
	return New(Identity{Name: "dom", UUID: "6c3b1f0e-8a4d-4f6b-9c2e-1d7a5b3e9f40"}, []domain.VMChannel{vc})
}

func sockPath(t testing.TB) string { return filepath.Join(t.TempDir(), "target.sock") }

// TestHalfCloseGuestFirst: the guest sends and half-closes; the host sees
// EOF, answers after it, and the guest sees the answer and then EOF.
func TestHalfCloseGuestFirst(t *testing.T) {
	path := sockPath(t)
	target(t, path, func(c net.Conn) {
		defer c.Close()
		req, _ := io.ReadAll(c) // to EOF: the guest's half-close
		c.Write(append([]byte("reply to "), req...))
	})
	r := newRelay(t, path, nil)
	relayEnd, guest := socketPair(t)
	if err := r.Handle(testChannel, relayEnd, netip.AddrPort{}); err != nil {
		t.Fatal(err)
	}
	guest.Write([]byte("request"))
	guest.CloseWrite()
	guest.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(guest)
	if err != nil || string(got) != "reply to request" {
		t.Fatalf("guest read %q, %v", got, err)
	}
	r.Wait()
	c, _ := r.Counters(testChannel)
	if c != (Counters{Active: 0, Total: 1, BytesIn: 7, BytesOut: 16}) {
		t.Errorf("counters %+v", c)
	}
}

// TestHalfCloseHostFirst: the host speaks first and half-closes; the guest
// still sends afterwards and the host still receives it.
func TestHalfCloseHostFirst(t *testing.T) {
	path := sockPath(t)
	got := make(chan string, 1)
	target(t, path, func(c net.Conn) {
		defer c.Close()
		c.Write([]byte("banner"))
		c.(*net.UnixConn).CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	r := newRelay(t, path, nil)
	relayEnd, guest := socketPair(t)
	r.Handle(testChannel, relayEnd, netip.AddrPort{})
	guest.SetReadDeadline(time.Now().Add(5 * time.Second))
	banner, err := io.ReadAll(guest) // ends with the host's half-close
	if err != nil || string(banner) != "banner" {
		t.Fatalf("guest read %q, %v", banner, err)
	}
	guest.Write([]byte("after the host closed"))
	guest.CloseWrite()
	select {
	case s := <-got:
		if s != "after the host closed" {
			t.Errorf("host read %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("host never saw the guest's data and EOF")
	}
}

// TestRefusedThenLater: no listener at the target closes the guest's
// connection at once and counts it; a service that starts later serves the
// next connection.
func TestRefusedThenLater(t *testing.T) {
	path := sockPath(t)
	r := newRelay(t, path, nil)
	relayEnd, guest := socketPair(t)
	start := time.Now()
	r.Handle(testChannel, relayEnd, netip.AddrPort{})
	guest.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, err := io.ReadAll(guest); err != nil || len(b) != 0 {
		t.Fatalf("refused connection read %q, %v", b, err)
	}
	if d := time.Since(start); d > DialTimeout {
		t.Errorf("refusal took %s", d)
	}
	r.Wait()
	if c, _ := r.Counters(testChannel); c.Refused != 1 || c.Active != 0 {
		t.Errorf("counters after a refusal: %+v", c)
	}
	target(t, path, func(c net.Conn) { c.Write([]byte("up now")); c.Close() })
	relayEnd, guest = socketPair(t)
	r.Handle(testChannel, relayEnd, netip.AddrPort{})
	guest.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(guest); string(b) != "up now" {
		t.Errorf("after the service started: %q", b)
	}
}

func TestLimit(t *testing.T) {
	path := sockPath(t)
	release := make(chan struct{})
	target(t, path, func(c net.Conn) { <-release; c.Close() })
	r := newRelay(t, path, func(vc *domain.VMChannel) { vc.MaxConnections = 2 })
	var guests []*net.UnixConn
	for i := 0; i < 3; i++ {
		relayEnd, guest := socketPair(t)
		guests = append(guests, guest)
		r.Handle(testChannel, relayEnd, netip.AddrPort{})
	}
	// The third is over the limit: closed at once.
	guests[2].SetReadDeadline(time.Now().Add(time.Second))
	if b, err := io.ReadAll(guests[2]); err != nil || len(b) != 0 {
		t.Fatalf("over-limit connection: %q, %v", b, err)
	}
	if c, _ := r.Counters(testChannel); c.Active != 2 || c.Refused != 1 || c.Total != 3 {
		t.Errorf("counters at the limit: %+v", c)
	}
	close(release)
	for _, g := range guests[:2] {
		g.Close()
	}
	r.Wait()
	if c, _ := r.Counters(testChannel); c.Active != 0 {
		t.Errorf("active after all ended: %+v", c)
	}
}

// TestProxyHeader: a host server that parses the header with the same
// library sees the guest's address, the channel, and the domain's identity.
func TestProxyHeader(t *testing.T) {
	path := sockPath(t)
	headers := make(chan *proxyproto.Header, 1)
	target(t, path, func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			t.Error(err)
			return
		}
		headers <- h
		rest, _ := io.ReadAll(br)
		c.Write(rest)
	})
	r := newRelay(t, path, func(vc *domain.VMChannel) { vc.Proxy = domain.ProxyV2 })
	relayEnd, guest := socketPair(t)
	src := netip.MustParseAddrPort("10.0.2.15:41234")
	r.Handle(testChannel, relayEnd, src)
	guest.Write([]byte("payload"))
	guest.CloseWrite()
	guest.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(guest); string(b) != "payload" {
		t.Errorf("payload after the header: %q", b)
	}
	h := <-headers
	s, d, ok := h.TCPAddrs()
	if !ok || s.AddrPort() != src || d.AddrPort() != testChannel || h.Version != 2 {
		t.Errorf("header addresses %v -> %v (v%d)", s, d, h.Version)
	}
	tlvs, _ := h.TLVs()
	found := map[proxyproto.PP2Type]string{}
	for _, tlv := range tlvs {
		found[tlv.Type] = string(tlv.Value)
	}
	if found[TLVDomainName] != "dom" || found[TLVDomainUUID] != "6c3b1f0e-8a4d-4f6b-9c2e-1d7a5b3e9f40" {
		t.Errorf("TLVs %v", found)
	}
}

// TestHandoff passes a connection with SCM_RIGHTS as the helper does, and
// checks that with no supervisor the helper is told to relay it itself.
func TestHandoff(t *testing.T) {
	path := sockPath(t)
	target(t, path, func(c net.Conn) { b, _ := io.ReadAll(c); c.Write(b); c.Close() })
	r := newRelay(t, path, nil)
	relaySock := filepath.Join(t.TempDir(), "relay.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: relaySock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(t.Context(), l)

	relayEnd, guest := socketPair(t)
	f, _ := relayEnd.File()
	relayEnd.Close()
	if err := Handoff(relaySock, testChannel, f); err != nil {
		t.Fatalf("Handoff: %v", err)
	}
	f.Close() // as the helper exits: the relay holds its own copy
	guest.Write([]byte("echo me"))
	guest.CloseWrite()
	guest.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(guest); string(b) != "echo me" {
		t.Errorf("through the handoff: %q", b)
	}
	fresh := func() *os.File {
		relayEnd, _ := socketPair(t)
		f, _ := relayEnd.File()
		relayEnd.Close()
		t.Cleanup(func() { f.Close() })
		return f
	}
	if err := Handoff(relaySock, netip.MustParseAddrPort("10.0.2.4:9"), fresh()); err == nil || errors.Is(err, ErrNoSupervisor) {
		t.Errorf("handoff of an unknown channel: %v", err)
	}
	l.Close()
	if err := Handoff(relaySock, testChannel, fresh()); !errors.Is(err, ErrNoSupervisor) {
		t.Errorf("handoff without a supervisor: %v; want ErrNoSupervisor", err)
	}
}
