package usernet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/minivirt/minivirt/pkg/domain"
)

// What a hostile guest sends in TestGuestFlood, and the bounds the
// supervisor must hold meanwhile. The bounds leave clear headroom: a
// network that holds what the guest sends stays far under them, one that
// grows per packet goes over within the first seconds.
const (
	floodDHCP = 300_000 // DISCOVER and REQUEST pairs, each from its own MAC
	floodARP  = 100_000 // requests for the gateway from random MACs and addresses
	floodSYN  = 100_000 // to the vmchannel port and as many to a closed one

	callDeadline       = time.Second // for each control call during the flood
	maxHeapGrowth      = 64 << 20    // HeapInuse after a GC, over the idle network's
	maxGoroutineGrowth = 256         // over the idle network's
)

// floodScale divides what TestGuestFlood sends: by ten under the race
// detector, which the flood would otherwise keep busy for minutes.
func floodScale() int {
	if raceDetector {
		return 10
	}
	return 1
}

// TestGuestFlood: a guest that floods the network with DHCP from random
// MACs, ARP and SYNs (to a vmchannel port and a closed one) leaves the
// supervisor's heap, goroutines and lease list bounded, its control calls
// answered in time, and a later normal DHCP exchange answered.
func TestGuestFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("floods the network for several seconds")
	}
	began := time.Now()
	channel := netip.AddrPortFrom(netip.MustParseAddr("10.0.2.4"), 600)
	closed := netip.AddrPortFrom(channel.Addr(), 601)
	n, qemu := startNetwork(t, []domain.VMChannel{{Address: channel.Addr(), Port: channel.Port(), Path: "/a"}})
	client := net.HardwareAddr(guestMAC)
	replies := dhcpReplies(t, qemu, client)

	// The idle network, and the guest's first lease, before the flood.
	if ack := dhcpExchange(t, qemu, replies, client); ack == nil {
		t.Fatal("no DHCP ACK before the flood")
	}
	idle := sample()

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	w := &watch{n: n, idle: idle, stop: stop}
	watched := make(chan struct{})
	go func() { defer close(watched); w.run(ctx) }()

	f := &flooder{conn: qemu, w: bufio.NewWriterSize(qemu, 1<<16), rng: rng}
	phases := []struct {
		name string
		send func(context.Context) error
	}{
		{"DHCP", f.dhcp},
		{"ARP", f.arp},
		{"SYN", func(ctx context.Context) error { return f.syn(ctx, channel, closed) }},
	}
	var floodErr error
	for _, p := range phases {
		start := time.Now()
		qemu.SetWriteDeadline(time.Now().Add(60 * time.Second)) // a network that stops reading fails the test, not hangs it
		if err := p.send(ctx); err != nil {
			floodErr = fmt.Errorf("%s flood: %w", p.name, err)
			break
		}
		t.Logf("%s flood: %d frames in %v", p.name, f.sent, time.Since(start).Round(time.Millisecond))
		f.sent = 0
	}
	qemu.SetWriteDeadline(time.Time{})
	stop()
	select {
	case <-watched:
	case <-time.After(5 * time.Second):
		t.Fatal("the watcher did not stop within 5s")
	}
	t.Logf("during the flood: %d control calls, slowest %v; heap grew at most %d KiB, goroutines at most %d; at most %d leases",
		w.calls, w.slowest, w.heapGrowth>>10, w.goroutineGrowth, w.leases)
	if w.err != nil {
		t.Fatalf("during the flood: %v", w.err)
	}
	if floodErr != nil {
		t.Fatal(floodErr)
	}

	// The guest's next DHCP exchange, retried as its client would: the
	// first reply may be lost while the flood's own replies (RSTs, SYN-ACKs,
	// ARP requests) still fill the link's bounded outbound queue.
	ack := dhcpExchange(t, qemu, replies, client)
	if ack == nil {
		t.Fatal("no DHCP ACK after the flood")
	}
	if got := ack.YourIPAddr.String(); got != domain.GuestAddress.String() {
		t.Errorf("after the flood the guest got %s, want %s", got, domain.GuestAddress)
	}
	leases := n.Leases()
	if len(leases) > maxLeases {
		t.Errorf("%d leases after the flood, want at most %d", len(leases), maxLeases)
	}
	want := Lease{MAC: client.String(), Address: netip.PrefixFrom(domain.GuestAddress, domain.UserNet.Bits())}
	if len(leases) == 0 || leases[len(leases)-1] != want {
		t.Errorf("leases after the flood %v, want the last %v", leases, want)
	}

	after := sample()
	t.Logf("after the flood: heap grew %d KiB, goroutines %d",
		(int64(after.heap)-int64(idle.heap))>>10, after.goroutines-idle.goroutines)
	if err := within(idle, after); err != nil {
		t.Errorf("after the flood: %v", err)
	}
	st := n.stack.Stats().TCP
	t.Logf("netstack: %d SYN cookies sent, %d RSTs sent, %d packets dropped, %d SYNs dropped on a full accept queue",
		st.ListenOverflowSynCookieSent.Value(), st.ResetsSent.Value(),
		n.stack.Stats().DroppedPackets.Value(), st.ListenOverflowSynDrop.Value())
	t.Logf("TestGuestFlood ran %v", time.Since(began).Round(time.Millisecond))
}

// usage is the part of the supervisor a flood could grow.
type usage struct {
	heap       uint64 // HeapInuse after a GC
	goroutines int
}

func sample() usage {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return usage{heap: m.HeapInuse, goroutines: runtime.NumGoroutine()}
}

// within says how now exceeds the test's bounds over idle, if it does.
func within(idle, now usage) error {
	if now.heap > idle.heap+maxHeapGrowth {
		return fmt.Errorf("heap in use %d MiB, %d MiB over the idle network's (bound %d MiB)",
			now.heap>>20, (now.heap-idle.heap)>>20, maxHeapGrowth>>20)
	}
	if now.goroutines > idle.goroutines+maxGoroutineGrowth {
		return fmt.Errorf("%d goroutines, %d over the idle network's (bound %d)",
			now.goroutines, now.goroutines-idle.goroutines, maxGoroutineGrowth)
	}
	return nil
}

// watch makes the control calls a supervisor makes while the guest floods
// (Leases for domifaddr; AddChannel and RemoveChannel for a live change),
// each within callDeadline, and samples heap and goroutines. The first
// bound broken stops the flood: the network under test has failed, and
// flooding it further would only make the test slow.
type watch struct {
	n    *Network
	idle usage
	stop context.CancelFunc

	calls           int
	slowest         time.Duration
	heapGrowth      uint64
	goroutineGrowth int
	leases          int
	err             error
}

func (w *watch) run(ctx context.Context) {
	extra := domain.VMChannel{Address: netip.MustParseAddr("10.0.2.4"), Port: 7000, Path: "/x"}
	var leases int // read only once the call that set it has returned
	calls := []struct {
		name string
		call func() error
	}{
		{"Leases", func() error {
			if leases = len(w.n.Leases()); leases > maxLeases {
				return fmt.Errorf("Leases returned %d leases, want at most %d", leases, maxLeases)
			}
			return nil
		}},
		{"AddChannel and RemoveChannel", func() error {
			if err := w.n.AddChannel(extra); err != nil {
				return err
			}
			w.n.RemoveChannel(netip.AddrPortFrom(extra.Address, extra.Port))
			return nil
		}},
	}
	tick := time.NewTicker(5 * time.Millisecond) // pace, not synchronisation
	defer tick.Stop()
	lastSample := time.Now()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		c := calls[i%len(calls)]
		took, err := timed(callDeadline, c.call)
		w.calls++
		w.slowest = max(w.slowest, took)
		if err != nil {
			w.fail(fmt.Errorf("%s: %w", c.name, err))
			return
		}
		w.leases = max(w.leases, leases)
		if time.Since(lastSample) < 100*time.Millisecond {
			continue
		}
		lastSample = time.Now()
		now := sample()
		if now.heap > w.idle.heap {
			w.heapGrowth = max(w.heapGrowth, now.heap-w.idle.heap)
		}
		w.goroutineGrowth = max(w.goroutineGrowth, now.goroutines-w.idle.goroutines)
		if err := within(w.idle, now); err != nil {
			w.fail(err)
			return
		}
	}
}

func (w *watch) fail(err error) {
	w.err = err
	w.stop()
}

var errLate = errors.New("no answer")

// timed runs call and says how long it took, or fails when it takes longer
// than deadline (the call is left to finish on its own).
func timed(deadline time.Duration, call func() error) (time.Duration, error) {
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- call() }()
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	select {
	case err := <-done:
		return time.Since(start), err
	case <-timer.C:
		return deadline, fmt.Errorf("%w within %v", errLate, deadline)
	}
}

// flooder writes a hostile guest's frames as QEMU would pass them on.
type flooder struct {
	conn net.Conn
	w    *bufio.Writer
	rng  *rand.Rand
	sent int
}

func (f *flooder) frame(b []byte) error {
	var n [lengthPrefix]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	f.w.Write(n[:])
	_, err := f.w.Write(b)
	f.sent++
	return err
}

// each writes count frames made by next, flushed in batches, until ctx ends.
func (f *flooder) each(ctx context.Context, count int, next func(i int) []byte) error {
	for i := range count {
		if i%256 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		if err := f.frame(next(i)); err != nil {
			return err
		}
	}
	return f.w.Flush()
}

func (f *flooder) mac() net.HardwareAddr {
	var m [6]byte
	v := f.rng.Uint64()
	for i := range m {
		m[i] = byte(v >> (8 * i))
	}
	m[0] = m[0]&^1 | 2 // unicast, locally administered
	return m[:]
}

// host is a random address in the guest's /24 that is none of the
// network's own.
func (f *flooder) host() netip.Addr {
	for {
		a := [4]byte{10, 0, 2, byte(1 + f.rng.IntN(254))}
		if a[3] != 2 && a[3] != 4 {
			return netip.AddrFrom4(a)
		}
	}
}

// Where a DHCP frame (as dhcpFrame makes it) holds the client's MAC.
const (
	ethSource = 6
	chaddr    = header.EthernetMinimumSize + header.IPv4MinimumSize + header.UDPMinimumSize + 28
)

func (f *flooder) dhcp(ctx context.Context) error {
	some := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	discover, err := dhcpv4.NewDiscovery(some)
	if err != nil {
		return err
	}
	request, err := dhcpv4.New(dhcpv4.WithHwAddr(some),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(domain.GuestAddress.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(domain.GatewayAddress.AsSlice())))
	if err != nil {
		return err
	}
	frames := [2][]byte{dhcpFrame(discover), dhcpFrame(request)}
	var mac net.HardwareAddr
	return f.each(ctx, 2*floodDHCP/floodScale(), func(i int) []byte {
		if i%2 == 0 {
			mac = f.mac()
		}
		b := frames[i%2]
		copy(b[ethSource:], mac)
		copy(b[chaddr:], mac)
		return b
	})
}

func (f *flooder) arp(ctx context.Context) error {
	return f.each(ctx, floodARP/floodScale(), func(int) []byte {
		return arpFrame(f.mac(), f.host(), domain.GatewayAddress)
	})
}

func (f *flooder) syn(ctx context.Context, open, closed netip.AddrPort) error {
	b := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+header.TCPMinimumSize)
	return f.each(ctx, 2*floodSYN/floodScale(), func(i int) []byte {
		to := open
		if i%2 == 1 {
			to = closed
		}
		from := netip.AddrPortFrom(f.host(), uint16(1024+f.rng.IntN(64512)))
		return synFrame(b, from, to, f.rng.Uint32())
	})
}

// dhcpFrame is m from its client, before it has an address, to every DHCP
// server on the link.
func dhcpFrame(m *dhcpv4.DHCPv4) []byte {
	payload := m.ToBytes()
	b := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+header.UDPMinimumSize+len(payload))
	header.Ethernet(b).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(m.ClientHWAddr), DstAddr: header.EthernetBroadcastAddress, Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(ip)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: header.IPv4Any, DstAddr: header.IPv4Broadcast})
	ip.SetChecksum(^ip.CalculateChecksum())
	udp := header.UDP(ip[header.IPv4MinimumSize:])
	udp.Encode(&header.UDPFields{SrcPort: dhcpv4.ClientPort, DstPort: dhcpv4.ServerPort, Length: uint16(len(udp))}) // no checksum, as IPv4 allows
	copy(udp[header.UDPMinimumSize:], payload)
	return b
}

// arpFrame asks who has target, from mac at ip.
func arpFrame(mac net.HardwareAddr, ip, target netip.Addr) []byte {
	b := make([]byte, header.EthernetMinimumSize+header.ARPSize)
	header.Ethernet(b).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(mac), DstAddr: header.EthernetBroadcastAddress, Type: header.ARPProtocolNumber})
	a := header.ARP(b[header.EthernetMinimumSize:])
	a.SetIPv4OverEthernet()
	a.SetOp(header.ARPRequest)
	copy(a.HardwareAddressSender(), mac)
	copy(a.ProtocolAddressSender(), ip.AsSlice())
	copy(a.ProtocolAddressTarget(), target.AsSlice())
	return b
}

// synFrame fills b with a SYN from the guest's link address.
func synFrame(b []byte, from, to netip.AddrPort, seq uint32) []byte {
	header.Ethernet(b).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(guestMAC), DstAddr: gatewayMAC, Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	src, dst := tcpip.AddrFrom4(from.Addr().As4()), tcpip.AddrFrom4(to.Addr().As4())
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(ip)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(ip[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: from.Port(), DstPort: to.Port(), SeqNum: seq,
		DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 64240})
	tcp.SetChecksum(^tcp.CalculateChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))))
	return b
}

// dhcpReplies reads every frame the network sends QEMU's end, as QEMU
// would, and passes on the DHCP replies to client; the rest is dropped.
func dhcpReplies(t *testing.T, qemu net.Conn, client net.HardwareAddr) <-chan *dhcpv4.DHCPv4 {
	t.Helper()
	out := make(chan *dhcpv4.DHCPv4, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := bufio.NewReaderSize(qemu, 1<<16)
		buf := make([]byte, maxFrame)
		var n [lengthPrefix]byte
		for {
			if _, err := io.ReadFull(r, n[:]); err != nil {
				return
			}
			size := binary.BigEndian.Uint32(n[:])
			if size > maxFrame {
				return
			}
			frame := buf[:size]
			if _, err := io.ReadFull(r, frame); err != nil {
				return
			}
			if m := dhcpReply(frame); m != nil && bytes.Equal(m.ClientHWAddr, client) {
				select {
				case out <- m:
				default: // nobody waits for it
				}
			}
		}
	}()
	t.Cleanup(func() {
		qemu.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("the frame reader did not stop within 5s")
		}
	})
	return out
}

// dhcpReply is the DHCP message in frame, if it holds one from a server.
func dhcpReply(frame []byte) *dhcpv4.DHCPv4 {
	if len(frame) < header.EthernetMinimumSize || header.Ethernet(frame).Type() != header.IPv4ProtocolNumber {
		return nil
	}
	ip := header.IPv4(frame[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.UDPProtocolNumber {
		return nil
	}
	udp := header.UDP(ip.Payload())
	if len(udp) < header.UDPMinimumSize || udp.SourcePort() != dhcpv4.ServerPort {
		return nil
	}
	m, err := dhcpv4.FromBytes(udp.Payload())
	if err != nil {
		return nil
	}
	return m
}

// dhcpExchange is a DHCP client's DISCOVER, OFFER, REQUEST and ACK from
// mac, each message sent again after a second unanswered as a client does;
// it returns the ACK, or nil when none came within 10 seconds.
func dhcpExchange(t *testing.T, qemu net.Conn, replies <-chan *dhcpv4.DHCPv4, mac net.HardwareAddr) *dhcpv4.DHCPv4 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	ask := func(m *dhcpv4.DHCPv4, want dhcpv4.MessageType) *dhcpv4.DHCPv4 {
		for time.Now().Before(deadline) {
			writeFrame(t, qemu, dhcpFrame(m))
			retry := time.NewTimer(time.Second)
			for waiting := true; waiting; {
				select {
				case r := <-replies:
					if r.TransactionID == m.TransactionID && r.MessageType() == want {
						retry.Stop()
						return r
					}
				case <-retry.C:
					waiting = false
				}
			}
			t.Logf("DHCP: no %s to %s within a second; again", want, m.MessageType())
		}
		return nil
	}
	discover, err := dhcpv4.NewDiscovery(mac)
	if err != nil {
		t.Fatal(err)
	}
	offer := ask(discover, dhcpv4.MessageTypeOffer)
	if offer == nil {
		return nil
	}
	request, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		t.Fatal(err)
	}
	return ask(request, dhcpv4.MessageTypeAck)
}
