package usernet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/usernet/usernettest"
	"github.com/minivirt/minivirt/pkg/vhostuser/vhostusertest"
)

// unixPair is a connected pair of Unix stream sockets.
func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "vhost-user")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// pattern is n bytes that say seed, and not by repeating a short period.
func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	x := seed | 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
	return b
}

// TestVhostUserStream: a guest's TCP connection to a vmchannel through the
// vhost-user device moves a few MiB each way intact, each direction ended
// by its end of stream, for a guest that takes the offloads (TSO and
// partial checksums both ways) and one that takes none (the device
// segments and checksums), with the guest's MTU the network's (its
// segments over the device's MSS-sized ones) or Ethernet's (the network's
// large segments cut to it).
func TestVhostUserStream(t *testing.T) {
	const size = 4 << 20
	for _, offloads := range []bool{false, true} {
		for _, guestMTU := range []uint32{MTU, 1500} {
			t.Run(fmt.Sprintf("offloads=%v/mtu=%d", offloads, guestMTU), func(t *testing.T) {
				vhostStream(t, vhostusertest.Options{Offloads: offloads}, guestMTU, size)
			})
		}
	}
}

func vhostStream(t *testing.T, opt vhostusertest.Options, guestMTU uint32, size int) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ch := netip.MustParseAddrPort("10.0.2.4:600")
	toGuest, fromGuest := pattern(size, 1), pattern(size, 2)
	type result struct {
		got []byte
		err error
	}
	host := make(chan result, 1)
	// The host service: reads the guest's stream to its end while it
	// sends its own, then ends its side.
	handle := func(_ netip.AddrPort, c net.Conn, _ netip.AddrPort) error {
		go func() {
			defer c.Close()
			read := make(chan result, 1)
			go func() { b, err := io.ReadAll(c); read <- result{b, err} }()
			if _, err := c.Write(toGuest); err != nil {
				host <- result{err: fmt.Errorf("host write: %w", err)}
				return
			}
			if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
				host <- result{err: fmt.Errorf("host CloseWrite: %w", err)}
				return
			}
			select {
			case r := <-read:
				host <- r
			case <-ctx.Done():
				host <- result{err: ctx.Err()}
			}
		}()
		return nil
	}
	n, err := NewVhostUser([]domain.VMChannel{{Address: ch.Addr(), Port: ch.Port(), Path: "/a"}}, MTU, handle)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ours, qemu := unixPair(t)
	defer ours.Close()
	served := make(chan error, 1)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { served <- n.ServeVhostUser(sctx, ours, t.Logf) }()
	d, err := vhostusertest.Connect(qemu, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	stream, err := d.Stream()
	if err != nil {
		t.Fatal(err)
	}
	guest, err := usernettest.Start(stream, guestMTU)
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()

	g, err := guest.Dial(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	context.AfterFunc(ctx, func() { g.Close() }) // a stalled stream fails, not hangs
	read := make(chan result, 1)
	go func() { b, err := io.ReadAll(g); read <- result{b, err} }()
	if _, err := g.Write(fromGuest); err != nil {
		t.Fatalf("guest write: %v", err)
	}
	if err := g.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	for _, w := range []struct {
		name string
		c    chan result
		want []byte
	}{{"the guest", read, toGuest}, {"the host", host, fromGuest}} {
		select {
		case r := <-w.c:
			if r.err != nil {
				t.Fatalf("%s: %v", w.name, r.err)
			}
			if !bytes.Equal(r.got, w.want) {
				t.Fatalf("%s got %d bytes (sha256 %x), want %d (%x)", w.name, len(r.got), sha256.Sum256(r.got), len(w.want), sha256.Sum256(w.want))
			}
		case <-ctx.Done():
			t.Fatalf("%s: %v (guest link: %v)", w.name, ctx.Err(), guest.Err())
		}
	}
	c := n.Counters()
	t.Logf("%d frames (%d bytes) to the guest, %d (%d bytes) from it", c.RxPackets, c.RxBytes, c.TxPackets, c.TxBytes)
	if c.RxPackets == 0 || c.RxBytes/c.RxPackets <= 1514 {
		t.Errorf("the network sent no TCP segments over Ethernet's MTU: segmentation offload was not exercised")
	}

	d.Close() // QEMU exits
	select {
	case err := <-served:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("ServeVhostUser: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("ServeVhostUser did not return when QEMU closed the connection")
	}
}
