package vmchannel

import (
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/minivirt/minivirt/pkg/domain"
)

// Run side by side: go test -bench . -benchmem ./pkg/vmchannel
// The Direct benchmarks are the baseline: the same traffic on one Unix
// connection with no relay in between.

// echoTarget answers each connection: one byte back for the first read.
func echoTarget(b *testing.B) string {
	path := sockPath(b)
	target(b, path, func(c net.Conn) {
		defer c.Close()
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err == nil {
			c.Write(one[:])
		}
	})
	return path
}

// BenchmarkRelayConnection is one relayed connection per op: a socketpair
// in, a fresh Unix connection out, one byte each way, both sides closed.
func BenchmarkRelayConnection(b *testing.B) {
	r := newRelay(b, echoTarget(b), func(vc *domain.VMChannel) { vc.MaxConnections = 1 << 20 })
	var one [1]byte
	b.ReportAllocs()
	for b.Loop() {
		relayEnd, guest := socketPair(b)
		r.Handle(testChannel, relayEnd, netip.AddrPort{})
		guest.Write([]byte{'x'})
		if _, err := io.ReadFull(guest, one[:]); err != nil {
			b.Fatal(err)
		}
		guest.Close()
	}
	r.Wait()
}

// BenchmarkDirectConnection is the same traffic with no relay: it makes
// and closes the same socketpair per op as the relay side (the set-up both
// pay), then talks to the target itself.
func BenchmarkDirectConnection(b *testing.B) {
	path := echoTarget(b)
	var one [1]byte
	b.ReportAllocs()
	for b.Loop() {
		a, z := socketPair(b)
		a.Close()
		z.Close()
		c, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		c.Write([]byte{'x'})
		if _, err := io.ReadFull(c, one[:]); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

const chunk = 64 << 10

func sinkTarget(b *testing.B) string {
	path := sockPath(b)
	target(b, path, func(c net.Conn) { io.Copy(io.Discard, c); c.Close() })
	return path
}

// BenchmarkRelayThroughput streams 64 KiB per op through one relayed
// connection.
func BenchmarkRelayThroughput(b *testing.B) {
	r := newRelay(b, sinkTarget(b), nil)
	relayEnd, guest := socketPair(b)
	r.Handle(testChannel, relayEnd, netip.AddrPort{})
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := guest.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	guest.Close()
	r.Wait()
}

func BenchmarkDirectThroughput(b *testing.B) {
	c, err := net.Dial("unix", sinkTarget(b))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, chunk)
	b.SetBytes(chunk)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}
