package usernet

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/usernet/usernettest"
)

// TestConnWaitRead: an accepted connection is a *Conn whose WaitRead waits
// for the guest's bytes (or ends with ctx), whose ReadNow reads what is
// there and nothing more, and which sees the guest's end of stream.
func TestConnWaitRead(t *testing.T) {
	ch := netip.MustParseAddrPort("10.0.2.4:600")
	accepted := make(chan net.Conn, 1)
	_, qemu := startNetworkWith(t, []domain.VMChannel{{Address: ch.Addr(), Port: ch.Port(), Path: "/a"}},
		func(_ netip.AddrPort, c net.Conn, _ netip.AddrPort) error { accepted <- c; return nil })
	guest, err := usernettest.Start(qemu, MTU)
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	g, err := guest.Dial(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var c *Conn
	select {
	case nc := <-accepted:
		var ok bool
		if c, ok = nc.(*Conn); !ok {
			t.Fatalf("accepted a %T, want a *Conn", nc)
		}
	case <-ctx.Done():
		t.Fatal("no connection accepted")
	}
	defer c.Close()

	buf := make([]byte, 16)
	if n, err := c.ReadNow(buf); n != 0 || err != nil {
		t.Errorf("ReadNow with nothing sent: %d, %v; want 0, nil", n, err)
	}
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := c.WaitRead(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitRead with nothing sent: %v; want the context's deadline", err)
	}

	g.Write([]byte("hello"))
	if err := c.WaitRead(ctx); err != nil {
		t.Fatalf("WaitRead: %v", err)
	}
	if n, err := c.ReadNow(buf); string(buf[:n]) != "hello" || err != nil {
		t.Errorf("ReadNow: %q, %v", buf[:n], err)
	}
	if n, err := c.ReadNow(buf); n != 0 || err != nil {
		t.Errorf("ReadNow after all was read: %d, %v; want 0, nil", n, err)
	}

	g.CloseWrite()
	if err := c.WaitRead(ctx); err != nil {
		t.Fatalf("WaitRead for the end of stream: %v", err)
	}
	if n, err := c.ReadNow(buf); n != 0 || err != io.EOF {
		t.Errorf("ReadNow at the end of stream: %d, %v; want 0, EOF", n, err)
	}
}
