package usernet

import (
	"encoding/binary"
	"io"
	"net/netip"
	"testing"
	"time"
)

// TestCounters: the frames from QEMU count as the guest's tx, the frames
// to it as its rx, each with its own length (not the stream's prefix).
func TestCounters(t *testing.T) {
	n, c := startNetwork(t, nil)
	if got := n.Counters(); got != (NICCounters{}) {
		t.Fatalf("counters before any frame: %+v", got)
	}
	req := arpRequest(netip.MustParseAddr("10.0.2.2"))
	var rxBytes, rxPackets uint64
	for range 2 {
		writeFrame(t, c, req)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var p [4]byte
		if _, err := io.ReadFull(c, p[:]); err != nil {
			t.Fatal(err)
		}
		frame := make([]byte, binary.BigEndian.Uint32(p[:]))
		if _, err := io.ReadFull(c, frame); err != nil {
			t.Fatal(err)
		}
		rxBytes += uint64(len(frame))
		rxPackets++
	}
	want := NICCounters{RxBytes: rxBytes, RxPackets: rxPackets, TxBytes: 2 * uint64(len(req)), TxPackets: 2}
	// The frame reaches the test before transmit counts it.
	var got NICCounters
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		if got = n.Counters(); got == want {
			return
		}
	}
	t.Errorf("counters = %+v, want %+v", got, want)
}

func TestNICCountersAdd(t *testing.T) {
	a := NICCounters{RxBytes: 1, RxPackets: 2, TxBytes: 3, TxPackets: 4}
	if got, want := a.Add(a), (NICCounters{2, 4, 6, 8}); got != want {
		t.Errorf("Add = %+v, want %+v", got, want)
	}
}
