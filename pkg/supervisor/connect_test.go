package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/fakeqemu"
	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/guestnet"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/unixsock"
	"github.com/minivirt/minivirt/pkg/usernet/usernettest"
)

// connectRig is a ready supervisor on minivirt's own network, with a guest
// stack (usernettest) on QEMU's end of it, answering on a control socket.
type connectRig struct {
	s       *supervisor
	guest   *usernettest.Guest
	control string
}

func newConnectRig(t *testing.T) *connectRig {
	t.Helper()
	return newConnectRigWithin(t, controlTimeouts{read: 10 * time.Second, handle: 60 * time.Second, write: 10 * time.Second})
}

// newConnectRigWithin is newConnectRig with the control socket's timeouts.
func newConnectRigWithin(t *testing.T, within controlTimeouts) *connectRig {
	t.Helper()
	d, err := domain.Parse(strings.NewReader(`<domain type='qemu'><name>c</name><memory>65536</memory><os><kernel>/k</kernel></os><devices><vmchannels network='netstack'/></devices></domain>`))
	if err != nil {
		t.Fatal(err)
	}
	s := &supervisor{d: d, ready: true, netstack: true, net: guestnet.New(d, unixsock.Ledger{})}
	qemuEnd, ourEnd, err := socketPair("network")
	if err != nil {
		t.Fatal(err)
	}
	ours, err := net.FileConn(ourEnd)
	ourEnd.Close()
	if err != nil {
		t.Fatal(err)
	}
	serve, err := s.net.Attach(ours, domain.BackendStream, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); serve(ctx) }()
	qemu, err := net.FileConn(qemuEnd)
	qemuEnd.Close()
	if err != nil {
		t.Fatal(err)
	}
	guest, err := usernettest.Start(qemu, d.NetstackMTU())
	if err != nil {
		t.Fatal(err)
	}
	control := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", control)
	if err != nil {
		t.Fatal(err)
	}
	go serveControlWithin(l, s.handle, within)
	t.Cleanup(func() {
		l.Close()
		guest.Close()
		stop()
		<-served
		s.net.Relay().Wait()
		if err := guest.Err(); err != nil {
			t.Errorf("the guest's link: %v", err)
		}
	})
	return &connectRig{s: s, guest: guest, control: control}
}

// serveGuest runs service on each connection to the guest's port and
// reports what it returns.
func (r *connectRig) serveGuest(t *testing.T, port uint16, service func(c net.Conn) string) <-chan string {
	t.Helper()
	l, err := r.guest.Listen(port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	out := make(chan string, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); out <- service(c) }()
		}
	}()
	return out
}

// service is the fake QEMU's guest service, for serveGuest.
func service(c net.Conn) string { fakeqemu.Service(c); return "" }

func closeWrite(t *testing.T, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

// OpConnect's byte path, end to end below the manager: the guest's first
// bytes, sent the moment it accepts, follow the answer on the control
// connection; a client's half-close reaches the guest as end of stream
// and the guest can still answer (1 MiB back after 1 MiB in); a guest's
// half-close ends what the client reads while the client can still send;
// each connection is counted for its guest port.
func TestConnectCarriesTheGuestConnection(t *testing.T) {
	r := newConnectRig(t)
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	r.serveGuest(t, 7, service)                           // speaks first, answers after end of stream
	heard := r.serveGuest(t, 9, func(c net.Conn) string { // half-closes first, then listens
		c.Write([]byte("bye"))
		c.(interface{ CloseWrite() error }).CloseWrite()
		in, err := io.ReadAll(c)
		if err != nil {
			return err.Error()
		}
		return string(in)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	c, err := Connect(ctx, r.control, 7)
	if err != nil {
		t.Fatal(err)
	}
	if err := fakeqemu.CheckEcho(c, payload, 20*time.Second); err != nil {
		t.Error(err)
	}

	c, err = Connect(ctx, r.control, 9)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if got, err := io.ReadAll(c); err != nil || string(got) != "bye" {
		t.Fatalf("until the guest's half-close: %q, %v", got, err)
	}
	if _, err := c.Write([]byte("still here")); err != nil {
		t.Fatalf("writing after the guest's half-close: %v", err)
	}
	closeWrite(t, c)
	select {
	case got := <-heard:
		if got != "still here" {
			t.Errorf("the guest heard %q after its half-close", got)
		}
	case <-ctx.Done():
		t.Fatal("the guest never read end of stream")
	}
	c.Close()

	// The relay's accounting of both connections, once they have ended.
	r.s.net.Relay().Wait()
	counted := map[uint16]guestnet.ConnectStatus{}
	for _, cs := range r.s.net.Connects() {
		counted[cs.GuestPort] = cs
	}
	if c7 := counted[7]; c7.Total != 1 || c7.Active != 0 || c7.BytesOut != uint64(len(payload)) || c7.BytesIn != uint64(len(payload)+len(fakeqemu.Greeting)) {
		t.Errorf("port 7 counted %+v; want 1 connection, %d bytes out, %d in", c7.Counters, len(payload), len(payload)+len(fakeqemu.Greeting))
	}
	if c9 := counted[9]; c9.Total != 1 || c9.BytesIn != 3 || c9.BytesOut != 10 {
		t.Errorf("port 9 counted %+v", c9.Counters)
	}
}

// The control connection's timeouts bound the request and its answer, not
// the stream that follows: a stream idle for longer than all of them
// still carries bytes both ways.
func TestConnectOutlivesTheControlTimeouts(t *testing.T) {
	r := newConnectRigWithin(t, controlTimeouts{read: 50 * time.Millisecond, handle: 10 * time.Second, write: 50 * time.Millisecond})
	r.serveGuest(t, 7, service)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, r.control, 7)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if err := fakeqemu.CheckEcho(c, []byte("late"), 5*time.Second); err != nil {
		t.Errorf("after the timeouts: %v", err)
	}
}

// A port nobody listens on in the guest is refused within a second or two,
// saying so, and counted; the control connection does not turn into a
// stream.
func TestConnectRefused(t *testing.T) {
	r := newConnectRig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	began := time.Now()
	c, err := Connect(ctx, r.control, 22)
	if err := fakeqemu.CheckRefusal(c, err, began, ErrRefused, 22); err != nil {
		t.Error(err)
	}
	if cs := r.s.net.Connects(); len(cs) != 1 || cs[0].GuestPort != 22 || cs[0].Refused != 1 || cs[0].Active != 0 {
		t.Errorf("counted %+v", cs)
	}
	if _, err := Connect(ctx, r.control, 0); err == nil || !strings.Contains(err.Error(), "1-65535") {
		t.Errorf("guest port 0: %v", err)
	}
}

// Off minivirt's own network there is no way in: the answer says so and
// what to do; before it is ready the supervisor says "starting".
func TestConnectElsewhere(t *testing.T) {
	named := func(name string) *domain.Domain {
		d := &domain.Domain{}
		d.Name = name
		return d
	}
	for _, tc := range []struct {
		s    *supervisor
		want string
	}{
		{&supervisor{d: named("u"), ready: true, plan: launcher.Plan{Network: domain.NetworkSlirp}}, "port add u --guest-port 22"},
		{&supervisor{d: named("n"), ready: true}, "has no network"},
		{&supervisor{}, ErrStarting.Error()},
	} {
		path := filepath.Join(t.TempDir(), "control.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		go serveControl(l, tc.s.handle)
		c, err := Connect(context.Background(), path, 22)
		if err == nil {
			c.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("connect: %v; want it to say %q", err, tc.want)
		}
		l.Close()
	}
}

// A client that sends bytes with its connect request, before the answer,
// is refused: the decoder holding them must not swallow the stream's first
// bytes.
func TestConnectRefusesEarlyBytes(t *testing.T) {
	r := newConnectRig(t)
	r.serveGuest(t, 7, func(c net.Conn) string { io.Copy(io.Discard, c); return "" })
	c, err := net.Dial("unix", r.control)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := json.Marshal(Request{Op: OpConnect, Port: 7})
	if _, err := c.Write(append(req, "SSH-2.0-early\r\n"...)); err != nil {
		t.Fatal(err)
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil || !strings.Contains(resp.Error, "before the answer") {
		t.Errorf("answer to early bytes: %+v, %v", resp, err)
	}
}
