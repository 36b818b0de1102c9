package vhostuser

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/minivirt/minivirt/pkg/vhostuser/vhostusertest"
)

// testLink is a Link whose frames are channels: what the guest sent comes
// out of from, what is sent on to goes to the guest.
type testLink struct {
	from chan []byte
	to   chan Frame
}

func newTestLink() *testLink {
	return &testLink{from: make(chan []byte, 1024), to: make(chan Frame, 64)}
}

func (l *testLink) Admit([]byte) bool { return true }

func (l *testLink) Deliver(frame []byte) {
	if len(frame) > MaxFrame {
		panic(fmt.Sprintf("a frame of %d bytes delivered", len(frame)))
	}
	select {
	case l.from <- frame:
	default:
		panic("testLink: more frames delivered than the test reads")
	}
}

func (l *testLink) Next(ctx context.Context, wait bool) (Frame, bool) {
	if !wait {
		select {
		case f := <-l.to:
			return f, true
		default:
			return Frame{}, false
		}
	}
	select {
	case f := <-l.to:
		return f, true
	case <-ctx.Done():
		return Frame{}, false
	}
}

// expect reads the next frame the guest sent and compares it with want.
func (l *testLink) expect(t *testing.T, ctx context.Context, want []byte) {
	t.Helper()
	select {
	case got := <-l.from:
		if !bytes.Equal(got, want) {
			t.Fatalf("the link got a frame of %d bytes (%.20x…), want %d bytes (%.20x…)", len(got), got, len(want), want)
		}
	case <-ctx.Done():
		t.Fatalf("no frame of %d bytes reached the link: %v", len(want), ctx.Err())
	}
}

// none asserts that the guest sent nothing for d, a deadline short enough
// for a test and far longer than a running queue takes to move a frame.
func (l *testLink) none(t *testing.T, d time.Duration, why string) {
	t.Helper()
	select {
	case got := <-l.from:
		t.Fatalf("%s: the link got a frame of %d bytes", why, len(got))
	case <-time.After(d):
	}
}

// testLog collects what Serve's logf reports.
type testLog struct {
	t    *testing.T
	mu   sync.Mutex
	ms   []string
	more chan struct{} // a message came
}

func (l *testLog) logf(format string, args ...any) {
	m := fmt.Sprintf(format, args...)
	l.t.Log("logf: " + m)
	if strings.Contains(m, "\n") {
		l.t.Errorf("a log message of more than one line: %q", m)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ms = append(l.ms, m)
	select {
	case l.more <- struct{}{}:
	default:
	}
}

// wait waits until there are more than n messages.
func (l *testLog) wait(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	for l.count() <= n {
		select {
		case <-l.more:
		case <-ctx.Done():
			t.Fatalf("%d messages logged, want more than %d", l.count(), n)
		}
	}
}

func (l *testLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ms)
}

func (l *testLog) since(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.ms[n:]...)
}

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

// served is one Serve on one end of a socket pair and the driver on the
// other.
type served struct {
	d    *vhostusertest.Driver
	link *testLink
	log  *testLog
	done chan error
	stop context.CancelFunc
}

// serve starts Serve and connects a driver with opt.
func serve(t *testing.T, opt vhostusertest.Options) *served {
	t.Helper()
	ours, qemu := unixPair(t)
	s := &served{link: newTestLink(), log: &testLog{t: t, more: make(chan struct{}, 1)}, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	go func() { s.done <- Serve(ctx, ours, s.link, s.log.logf) }()
	d, err := vhostusertest.Connect(qemu, opt)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s.d = d
	t.Cleanup(func() {
		d.Close()
		cancel()
		s.wait(t)
		ours.Close()
	})
	return s
}

// wait waits for Serve to return, and wants nil.
func (s *served) wait(t *testing.T) {
	t.Helper()
	select {
	case err, ok := <-s.done:
		if ok && err != nil {
			t.Errorf("Serve: %v", err)
		}
		if ok {
			close(s.done)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10s")
	}
}

// ethFrame is an Ethernet frame of n bytes (header included) whose bytes
// say seed.
func ethFrame(n int, seed byte) []byte {
	f := make([]byte, n)
	copy(f, []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x52, 0x55, 0x0a, 0x00, 0x02, 0x02, 0x88, 0xb5})
	for i := 14; i < n; i++ {
		f[i] = byte(i*7) ^ seed
	}
	return f
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var optionSets = []struct {
	name string
	opt  vhostusertest.Options
}{{"no offloads", vhostusertest.Options{}}, {"offloads", vhostusertest.Options{Offloads: true}}}

// TestFrames: frames of every size up to MaxFrame go both ways intact,
// the large ones to the guest across mergeable buffers; a TCP frame of
// many segments with a partial checksum reaches a guest that took the
// offloads as one frame whose header says so, and one that took none as
// MSS-sized segments with whole checksums.
func TestFrames(t *testing.T) {
	for _, o := range optionSets {
		t.Run(o.name, func(t *testing.T) {
			s := serve(t, o.opt)
			ctx := testContext(t)
			for i, n := range []int{14, 60, 1514, 4096 - 12, 4096, 9014, 40000, MaxFrame} {
				f := ethFrame(n, byte(i))
				if err := s.d.Send(ctx, f); err != nil {
					t.Fatal(err)
				}
				s.link.expect(t, ctx, f)

				s.link.to <- Frame{Data: bytes.Clone(f)}
				got, err := s.d.Recv(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, f) {
					t.Fatalf("the guest got a frame of %d bytes, want %d", len(got), len(f))
				}
			}

			// A frame over MaxFrame from the link is dropped, not given
			// to the guest; the next one goes through.
			logged := s.log.count()
			s.link.to <- Frame{Data: ethFrame(MaxFrame+1, 0)}
			small := ethFrame(60, 1)
			s.link.to <- Frame{Data: small}
			if got, err := s.d.Recv(ctx); err != nil || !bytes.Equal(got, small) {
				t.Fatalf("after a frame over MaxFrame the guest got %d bytes, %v; want %d", len(got), err, len(small))
			}
			if ms := s.log.since(logged); len(ms) != 1 {
				t.Errorf("a frame over MaxFrame for the guest: logged %q", ms)
			}

			const mss, size = 1460, 20000
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(i * 13)
			}
			released := make(chan struct{})
			s.link.to <- Frame{Data: tcpFrame(payload, 1000), MSS: mss, PartialChecksum: true, Release: func() { close(released) }}
			var segs [][]byte
			if o.opt.Offloads {
				f, err := s.d.Recv(ctx)
				if err != nil {
					t.Fatal(err)
				}
				segs = append(segs, f)
			} else {
				for range (size + mss - 1) / mss {
					f, err := s.d.Recv(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if len(f) > 14+20+20+mss {
						t.Fatalf("a segment of %d bytes for a guest that takes no segmentation", len(f))
					}
					segs = append(segs, f)
				}
			}
			var got []byte
			seq := uint32(1000)
			for i, f := range segs {
				p, fseq, err := checkTCP(f)
				if err != nil {
					t.Fatalf("segment %d: %v", i, err)
				}
				if fseq != seq {
					t.Fatalf("segment %d: sequence %d, want %d", i, fseq, seq)
				}
				seq += uint32(len(p))
				got = append(got, p...)
				wantFlags := byte(0x10) // ACK; PSH only on the last segment
				if i == len(segs)-1 {
					wantFlags |= 0x08
				}
				if flags := f[14+20+13]; flags != wantFlags {
					t.Errorf("segment %d of %d: TCP flags %#x, want %#x", i, len(segs), flags, wantFlags)
				}
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("the guest got %d bytes of TCP payload in %d segments, not the %d sent", len(got), len(segs), len(payload))
			}
			select {
			case <-released:
			case <-ctx.Done():
				t.Fatal("the frame was not released")
			}
		})
	}
}

// Addresses of tcpFrame's packet: the gateway to the guest.
var (
	gatewayIP = [4]byte{10, 0, 2, 2}
	guestIP   = [4]byte{10, 0, 2, 15}
)

// tcpFrame is an Ethernet frame of one IPv4 TCP packet carrying payload,
// its IPv4 checksum whole and its TCP checksum partial (the
// pseudo-header's sum), as a stack with segmentation offload sends one.
func tcpFrame(payload []byte, seq uint32) []byte {
	f := make([]byte, 14+20+20+len(payload))
	copy(f, ethFrame(14, 0))
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	binary.BigEndian.PutUint16(ip[4:], 77)
	ip[8], ip[9] = 64, protoTCP
	copy(ip[12:], gatewayIP[:])
	copy(ip[16:], guestIP[:])
	binary.BigEndian.PutUint16(ip[10:], ^checksum.Checksum(ip[:20], 0))
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], 600)
	binary.BigEndian.PutUint16(tcp[2:], 40000)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 5 << 4
	tcp[13] = 0x18 // PSH, ACK
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], payload)
	binary.BigEndian.PutUint16(tcp[16:], checksum.Checksum(pseudoHeader(ip[12:20], len(tcp)), 0))
	return f
}

func pseudoHeader(addrs []byte, n int) []byte {
	p := append([]byte(nil), addrs...)
	return append(p, 0, protoTCP, byte(n>>8), byte(n))
}

// checkTCP checks an Ethernet frame's IPv4 and TCP headers and checksums
// (with gVisor's checksum, not this package's) and returns its payload and
// sequence number.
func checkTCP(f []byte) ([]byte, uint32, error) {
	if len(f) < 54 || binary.BigEndian.Uint16(f[12:]) != 0x0800 {
		return nil, 0, fmt.Errorf("not IPv4 (%d bytes)", len(f))
	}
	ip := f[14:]
	if int(binary.BigEndian.Uint16(ip[2:])) != len(ip) {
		return nil, 0, fmt.Errorf("IPv4 length %d in a packet of %d", binary.BigEndian.Uint16(ip[2:]), len(ip))
	}
	if checksum.Checksum(ip[:20], 0) != 0xffff {
		return nil, 0, errors.New("bad IPv4 checksum")
	}
	tcp := ip[20:]
	if checksum.Checksum(tcp, checksum.Checksum(pseudoHeader(ip[12:20], len(tcp)), 0)) != 0xffff {
		return nil, 0, errors.New("bad TCP checksum")
	}
	return tcp[20:], binary.BigEndian.Uint32(tcp[4:]), nil
}

// TestGetVringBase: GET_VRING_BASE stops a ring and says where it
// stopped; the stopped ring moves nothing; the ring started again from
// there carries on.
func TestGetVringBase(t *testing.T) {
	s := serve(t, vhostusertest.Options{})
	ctx := testContext(t)
	for i := range 3 {
		f := ethFrame(100, byte(i))
		if err := s.d.Send(ctx, f); err != nil {
			t.Fatal(err)
		}
		s.link.expect(t, ctx, f)
		s.link.to <- Frame{Data: f}
		if _, err := s.d.Recv(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for q, name := range []string{"receive", "transmit"} {
		base, err := s.d.GetVringBase(q)
		if err != nil {
			t.Fatal(err)
		}
		if base != 3 {
			t.Errorf("%s queue stopped at %d, want 3", name, base)
		}
	}

	f := ethFrame(200, 9)
	if err := s.d.Send(ctx, f); err != nil {
		t.Fatal(err)
	}
	s.link.none(t, 200*time.Millisecond, "a stopped transmit queue")
	s.link.to <- Frame{Data: f}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if got, err := s.d.Recv(short); err == nil {
		t.Fatalf("a stopped receive queue gave the guest %d bytes", len(got))
	}

	for q := range 2 {
		if err := s.d.Restart(q, 3); err != nil {
			t.Fatal(err)
		}
	}
	s.link.expect(t, ctx, f)
	got, err := s.d.Recv(ctx)
	if err != nil || !bytes.Equal(got, f) {
		t.Fatalf("after the restart the guest got %d bytes, %v", len(got), err)
	}
	if base, err := s.d.GetVringBase(vhostusertest.TxQueue); err != nil || base != 4 {
		t.Errorf("transmit queue stopped at %d (%v), want 4", base, err)
	}
}

// resources counts what a connection holds in this process: mappings of
// the driver's guest RAM and eventfds.
func resources(t *testing.T) (mappings, eventfds int) {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	mappings = strings.Count(string(maps), "memfd:guest-ram")
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.Contains(l, "eventfd") {
			eventfds++
		}
	}
	return mappings, eventfds
}

// workers counts the goroutines running a queue.
func workers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			count := 0
			for _, g := range strings.Split(string(buf[:n]), "\n\n") {
				if strings.Contains(g, "vhostuser.(*worker).") {
					count++
				}
			}
			return count
		}
		buf = make([]byte, 2*len(buf))
	}
}

// exchange sends a frame each way and wants both through.
func exchange(t *testing.T, s *served, ctx context.Context, seed byte) {
	t.Helper()
	f := ethFrame(1000, seed)
	if err := s.d.Send(ctx, f); err != nil {
		t.Fatal(err)
	}
	s.link.expect(t, ctx, f)
	s.link.to <- Frame{Data: f}
	if got, err := s.d.Recv(ctx); err != nil || !bytes.Equal(got, f) {
		t.Fatalf("the guest got %d bytes, %v", len(got), err)
	}
}

// TestCloseAndReconnect: QEMU closing the connection makes Serve return
// nil with its queues stopped (no worker left), the guest's memory
// unmapped and its eventfds closed; a QEMU that connects again to a new
// Serve meets a working device. Serve's context ending stops it the same.
func TestCloseAndReconnect(t *testing.T) {
	if w := workers(); w != 0 {
		t.Fatalf("%d queue workers before the test", w)
	}
	maps0, efds0 := resources(t)
	ctx := testContext(t)
	for round := range 3 {
		s := serve(t, vhostusertest.Options{Offloads: round == 1})
		exchange(t, s, ctx, byte(round))
		if w := workers(); w != 2 {
			t.Errorf("round %d: %d queue workers while serving, want 2", round, w)
		}
		maps, efds := resources(t)
		if maps != maps0+2 || efds != efds0+8 {
			t.Errorf("round %d: %d guest RAM mappings and %d eventfds while serving, want %d and %d", round, maps, efds, maps0+2, efds0+8)
		}
		if round == 2 {
			s.stop() // the supervisor stops the device
		} else {
			s.d.Close() // QEMU exits
		}
		s.wait(t)
		s.d.Close()
		if w := workers(); w != 0 {
			t.Errorf("round %d: %d queue workers after Serve returned", round, w)
		}
		// The driver's own mapping stays (its RAM is never unmapped).
		maps, efds = resources(t)
		if maps != maps0+1 || efds != efds0 {
			t.Errorf("round %d: %d guest RAM mappings and %d eventfds after Serve returned, want %d and %d", round, maps, efds, maps0+1, efds0)
		}
		maps0 = maps
	}
}

// hostile is one chain a hostile guest makes available on the transmit
// queue: its descriptors, its head, and what it writes at RawBuf.
type hostile struct {
	name  string
	descs map[uint16]vhostusertest.Desc
	head  uint16
	data  []byte
	// deliver is the frame the chain carries when it is well formed.
	deliver []byte
}

// TestHostileGuest: chains a guest breaks are completed and dropped, each
// reported, and the queue goes on with the next well-formed frame; a head
// outside the ring stops the queue, until QEMU starts it again.
func TestHostileGuest(t *testing.T) {
	const hdr = 12
	at := uint64(vhostusertest.RawBuf)
	frame := append(make([]byte, hdr), ethFrame(1000, 1)...)
	biggest := append(make([]byte, hdr), ethFrame(MaxFrame, 2)...)
	over := append(make([]byte, hdr), ethFrame(MaxFrame+1, 3)...)
	d := func(addr uint64, n int, flags, next uint16) vhostusertest.Desc {
		return vhostusertest.Desc{Addr: addr, Len: uint32(n), Flags: flags, Next: next}
	}
	// An indirect table at RawBuf+0x10000 naming the frame at RawBuf.
	indirect := make([]byte, 16)
	binary.LittleEndian.PutUint64(indirect, at)
	binary.LittleEndian.PutUint32(indirect[8:], uint32(len(frame)))
	cases := []hostile{
		{name: "well formed", descs: map[uint16]vhostusertest.Desc{40: d(at, len(frame), 0, 0)}, head: 40, data: frame, deliver: frame[hdr:]},
		{name: "MaxFrame in two", descs: map[uint16]vhostusertest.Desc{40: d(at, 100, descNext, 41), 41: d(at+100, len(biggest)-100, 0, 0)},
			head: 40, data: biggest, deliver: biggest[hdr:]},
		{name: "past the end of memory", descs: map[uint16]vhostusertest.Desc{40: d(vhostusertest.MemSize-100, 200, 0, 0)}, head: 40},
		{name: "far outside memory", descs: map[uint16]vhostusertest.Desc{40: d(1<<40, 100, 0, 0)}, head: 40},
		{name: "wrapping around", descs: map[uint16]vhostusertest.Desc{40: d(^uint64(0)-10, 100, 0, 0)}, head: 40},
		{name: "second descriptor outside", descs: map[uint16]vhostusertest.Desc{40: d(at, 100, descNext, 41), 41: d(vhostusertest.MemSize, 1, 0, 0)},
			head: 40, data: frame},
		{name: "next past the table", descs: map[uint16]vhostusertest.Desc{40: d(at, 100, descNext, vhostusertest.QueueSize)}, head: 40, data: frame},
		{name: "loop", descs: map[uint16]vhostusertest.Desc{40: d(at, 10, descNext, 41), 41: d(at+10, 10, descNext, 40)}, head: 40, data: frame},
		{name: "self loop", descs: map[uint16]vhostusertest.Desc{40: d(at, 0, descNext, 40)}, head: 40, data: frame},
		{name: "writable", descs: map[uint16]vhostusertest.Desc{40: d(at, len(frame), descWrite, 0)}, head: 40, data: frame},
		{name: "writable second", descs: map[uint16]vhostusertest.Desc{40: d(at, 100, descNext, 41), 41: d(at+100, len(frame)-100, descWrite, 0)},
			head: 40, data: frame},
		{name: "over MaxFrame", descs: map[uint16]vhostusertest.Desc{40: d(at, len(over), 0, 0)}, head: 40, data: over},
		{name: "over MaxFrame in two", descs: map[uint16]vhostusertest.Desc{40: d(at, len(biggest), descNext, 41), 41: d(at, 1, 0, 0)},
			head: 40, data: biggest},
		{name: "indirect", descs: map[uint16]vhostusertest.Desc{40: d(at+0x10000, 16, descIndirect, 0)}, head: 40,
			data: append(append(frame, make([]byte, 0x10000-len(frame))...), indirect...)},
	}
	s := serve(t, vhostusertest.Options{})
	ctx := testContext(t)
	for i, c := range cases {
		logged := s.log.count()
		used := s.d.UsedIdx(vhostusertest.TxQueue)
		copy(s.d.Mem()[at:], c.data)
		s.d.PostRaw(c.descs, c.head)
		good := ethFrame(500, byte(i))
		if err := s.d.Send(ctx, good); err != nil {
			t.Fatal(err)
		}
		if c.deliver != nil {
			s.link.expect(t, ctx, c.deliver)
		}
		s.link.expect(t, ctx, good) // the queue goes on, past the broken chain
		if err := s.d.WaitUsed(ctx, vhostusertest.TxQueue, used+2); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got := s.d.UsedIdx(vhostusertest.TxQueue) - used; got != 2 {
			t.Errorf("%s: used index moved by %d, want 2 (the chain completed, and the next)", c.name, got)
		}
		ms := s.log.since(logged)
		if c.deliver == nil && (len(ms) != 1 || !strings.Contains(ms[0], errChain.Error())) {
			t.Errorf("%s: logged %q, want one malformed chain", c.name, ms)
		}
		if c.deliver != nil && len(ms) != 0 {
			t.Errorf("%s: logged %q", c.name, ms)
		}
	}

	// A head past the ring, after a well-formed chain: the well-formed
	// one is completed and the guest interrupted.
	used := s.d.UsedIdx(vhostusertest.TxQueue)
	copy(s.d.Mem()[at:], frame)
	s.d.PostRaw(map[uint16]vhostusertest.Desc{40: d(at, len(frame), 0, 0)}, 40, vhostusertest.QueueSize)
	s.link.expect(t, ctx, frame[hdr:])
	if err := s.d.WaitUsed(ctx, vhostusertest.TxQueue, used+1); err != nil {
		t.Fatalf("the chain before a head past the ring: %v", err)
	}
	base, err := s.d.GetVringBase(vhostusertest.TxQueue)
	if want := s.d.AvailIdx(vhostusertest.TxQueue); err != nil || base != uint32(want) {
		t.Fatalf("GET_VRING_BASE after a head past the ring: %d (%v), want %d", base, err, want)
	}
	if err := s.d.Restart(vhostusertest.TxQueue, base); err != nil {
		t.Fatal(err)
	}
	exchange(t, s, ctx, 101)

	// An available index more than the ring's size ahead stops the queue
	// where it was: the device does not take the ring's entries again.
	logged := s.log.count()
	idx := s.d.AvailIdx(vhostusertest.TxQueue)
	s.d.PublishAvail(vhostusertest.TxQueue, idx+vhostusertest.QueueSize+1)
	s.log.wait(t, ctx, logged)
	if ms := s.log.since(logged); len(ms) != 1 || !strings.Contains(ms[0], "available index") {
		t.Errorf("an available index too far ahead: logged %q", ms)
	}
	s.link.none(t, 50*time.Millisecond, "an available index too far ahead")
	s.d.PublishAvail(vhostusertest.TxQueue, idx)
	if base, err := s.d.GetVringBase(vhostusertest.TxQueue); err != nil || base != uint32(idx) {
		t.Fatalf("GET_VRING_BASE after an available index too far ahead: %d (%v), want %d", base, err, idx)
	}
	if err := s.d.Restart(vhostusertest.TxQueue, uint32(idx)); err != nil {
		t.Fatal(err)
	}
	exchange(t, s, ctx, 102)

	// A head past the ring leaves nothing to complete: the queue stops
	// there, what follows waits, and GET_VRING_BASE says where.
	logged = s.log.count()
	s.d.PostRaw(nil, vhostusertest.QueueSize+5)
	stopped := s.d.AvailIdx(vhostusertest.TxQueue)
	good := ethFrame(500, 99)
	if err := s.d.Send(ctx, good); err != nil {
		t.Fatal(err)
	}
	s.link.none(t, 200*time.Millisecond, "a queue whose guest made a head past the ring available")
	if ms := s.log.since(logged); len(ms) != 1 || !strings.Contains(ms[0], "head") {
		t.Errorf("a head past the ring: logged %q", ms)
	}
	base, err = s.d.GetVringBase(vhostusertest.TxQueue)
	if err != nil || base != uint32(stopped) {
		t.Fatalf("GET_VRING_BASE after a head past the ring: %d (%v), want %d", base, err, stopped)
	}
	if err := s.d.Restart(vhostusertest.TxQueue, base); err != nil {
		t.Fatal(err)
	}
	s.link.expect(t, ctx, good)
	exchange(t, s, ctx, 100)
}

// TestStarvedReceiveQueue: a frame that needs more receive buffers than
// the guest made available waits for more without spinning, and a stop
// (the guest resetting the device, QEMU's GET_VRING_BASE) ends the wait at
// once, the buffers untaken.
func TestStarvedReceiveQueue(t *testing.T) {
	s := serve(t, vhostusertest.Options{})
	if _, err := s.d.GetVringBase(vhostusertest.RxQueue); err != nil {
		t.Fatal(err)
	}
	// Every buffer posted so far counts as taken; then one more, of 4 KiB.
	if err := s.d.Restart(vhostusertest.RxQueue, vhostusertest.QueueSize); err != nil {
		t.Fatal(err)
	}
	s.d.PublishAvail(vhostusertest.RxQueue, vhostusertest.QueueSize+1)
	s.d.Interrupts(vhostusertest.RxQueue)
	s.link.to <- Frame{Data: ethFrame(20000, 7)} // five 4 KiB buffers' worth
	// For a while, nothing: no frame, and not an interrupt per retry.
	<-time.After(300 * time.Millisecond)
	if n := s.d.Interrupts(vhostusertest.RxQueue); n > 4 {
		t.Errorf("%d interrupts while the receive queue waited for buffers: the device spins", n)
	}
	if used := s.d.UsedIdx(vhostusertest.RxQueue); used != 0 {
		t.Errorf("used index %d: the guest got part of a frame", used)
	}
	base, err := s.d.GetVringBase(vhostusertest.RxQueue)
	if err != nil {
		t.Fatalf("a stop while the receive queue waits for buffers: %v", err)
	}
	if base != vhostusertest.QueueSize {
		t.Errorf("the receive queue stopped at %d, want %d (the one buffer untaken)", base, vhostusertest.QueueSize)
	}
}
