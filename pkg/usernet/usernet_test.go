package usernet

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/usernet/usernettest"
)

// qemuEnd starts the network on one end of a socket pair and returns the
// other, as QEMU would hold it.
func qemuEnd(t *testing.T, channels []domain.VMChannel) net.Conn {
	t.Helper()
	_, qemu := startNetwork(t, channels)
	return qemu
}

// startNetwork is qemuEnd that also returns the network, for tests that
// call it while the guest's frames flow.
func startNetwork(t *testing.T, channels []domain.VMChannel) (*Network, net.Conn) {
	t.Helper()
	return startNetworkWith(t, channels, func(netip.AddrPort, net.Conn, netip.AddrPort) error { return nil })
}

// startNetworkWith is startNetwork with handle taking the connections.
func startNetworkWith(t *testing.T, channels []domain.VMChannel, handle Handler) (*Network, net.Conn) {
	t.Helper()
	n, err := New(channels, handle)
	if err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "pair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ours, qemu := conn(fds[0]), conn(fds[1])
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx, ours) }()
	t.Cleanup(func() { cancel(); <-done; n.Close(); qemu.Close() })
	return n, qemu
}

var guestMAC = []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// arpRequest is an Ethernet frame asking who has ip, from the guest.
func arpRequest(ip netip.Addr) []byte {
	var f bytes.Buffer
	f.Write([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})       // to: broadcast
	f.Write(guestMAC)                                         // from: the guest
	f.Write([]byte{0x08, 0x06})                               // ARP
	f.Write([]byte{0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01}) // Ethernet/IPv4, request
	f.Write(guestMAC)
	g := domain.GuestAddress.As4()
	f.Write(g[:])
	f.Write(make([]byte, 6))
	a := ip.As4()
	f.Write(a[:])
	return f.Bytes()
}

func writeFrame(t *testing.T, c net.Conn, frame []byte) {
	t.Helper()
	b := binary.BigEndian.AppendUint32(nil, uint32(len(frame)))
	if _, err := c.Write(append(b, frame...)); err != nil {
		t.Fatal(err)
	}
}

// readARPReply reads frames until an ARP reply and returns its sender's
// link and IP address, or false when none comes within a second.
func readARPReply(t *testing.T, c net.Conn) ([]byte, netip.Addr, bool) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(time.Second))
	defer c.SetReadDeadline(time.Time{})
	for {
		var n [4]byte
		if _, err := io.ReadFull(c, n[:]); err != nil {
			return nil, netip.Addr{}, false
		}
		frame := make([]byte, binary.BigEndian.Uint32(n[:]))
		if _, err := io.ReadFull(c, frame); err != nil {
			return nil, netip.Addr{}, false
		}
		if len(frame) >= 42 && frame[12] == 0x08 && frame[13] == 0x06 && frame[21] == 2 {
			return frame[22:28], netip.AddrFrom4([4]byte(frame[28:32])), true
		}
	}
}

// TestARP: the network answers ARP for the gateway and for every vmchannel
// address, with its own link address, and for nothing else.
func TestARP(t *testing.T) {
	c := qemuEnd(t, []domain.VMChannel{
		{Address: netip.MustParseAddr("10.0.2.4"), Port: 600, Path: "/a"},
		{Address: netip.MustParseAddr("10.0.2.9"), Port: 7, Path: "/b"},
	})
	for _, ip := range []string{"10.0.2.2", "10.0.2.4", "10.0.2.9"} {
		writeFrame(t, c, arpRequest(netip.MustParseAddr(ip)))
		mac, from, ok := readARPReply(t, c)
		if !ok || from.String() != ip || !bytes.Equal(mac, []byte(gatewayMAC)) {
			t.Errorf("ARP for %s: reply %v from %s (%x)", ip, ok, from, mac)
		}
	}
	for _, ip := range []string{"10.0.2.3", "10.0.2.5", "192.0.2.1"} {
		writeFrame(t, c, arpRequest(netip.MustParseAddr(ip)))
		if _, from, ok := readARPReply(t, c); ok {
			t.Errorf("ARP for %s answered by %s", ip, from)
		}
	}
}

// TestOversizedFrame: a frame longer than any MTU ends the link instead of
// making the supervisor allocate what the length says.
func TestOversizedFrame(t *testing.T) {
	n, err := New(nil, func(netip.AddrPort, net.Conn, netip.AddrPort) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	a, b := net.Pipe()
	defer b.Close()
	done := make(chan error, 1)
	go func() { done <- n.Serve(context.Background(), a) }()
	b.Write([]byte{0xff, 0xff, 0xff, 0xff})
	select {
	case err := <-done:
		if err == nil {
			t.Error("a 4 GiB frame length was accepted")
		}
	case <-time.After(5 * time.Second):
		t.Error("Serve did not end on a 4 GiB frame length")
	}
}

// TestLeaseTable: the table holds at most its bound, forgets the least
// recently acknowledged lease first, and a lease acknowledged again is the
// most recent.
func TestLeaseTable(t *testing.T) {
	at := netip.MustParsePrefix("10.0.2.15/24")
	tab := newLeaseTable(3)
	for _, mac := range []string{"a", "b", "c", "a", "d"} {
		tab.add(Lease{MAC: mac, Address: at})
	}
	var got []string
	for _, l := range tab.list() {
		got = append(got, l.MAC)
	}
	if want := []string{"c", "a", "d"}; !slices.Equal(got, want) {
		t.Errorf("leases %v, want %v", got, want)
	}
	if len(tab.byMAC) != 3 || cap(tab.order) != 3 {
		t.Errorf("%d leases by MAC, order of capacity %d; want 3 and 3", len(tab.byMAC), cap(tab.order))
	}
}

// DialGuest's failures are the errnos a host socket's connect gives: a
// port the guest does not listen on is refused at once, and a guest that
// does not answer ARP (none here) is unreachable after the neighbour
// probes, within ctx.
func TestDialGuestErrors(t *testing.T) {
	n, qemu := startNetwork(t, nil)
	guest, err := usernettest.Start(qemu, MTU)
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	l, err := guest.Listen(7)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := n.DialGuest(ctx, 7)
	if err != nil {
		t.Fatalf("a port the guest listens on: %v", err)
	}
	c.Close()
	began := time.Now()
	if _, err := n.DialGuest(ctx, 8); !errors.Is(err, syscall.ECONNREFUSED) || time.Since(began) > 30*time.Second { // a hang guard
		t.Errorf("a port nobody listens on: %v after %v; want ECONNREFUSED at once", err, time.Since(began))
	}

	lonely, _ := startNetwork(t, nil) // QEMU's end is never read: no guest answers
	began = time.Now()
	if _, err := lonely.DialGuest(ctx, 7); !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Errorf("no guest: %v after %v; want EHOSTUNREACH", err, time.Since(began))
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := lonely.DialGuest(short, 7); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no guest, ctx ending first: %v", err)
	}
}
