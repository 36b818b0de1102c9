package usernet

import "sync/atomic"

// NICCounters count the frames a network exchanged with QEMU, from the
// guest's point of view, as virsh's net.N.* stats are: Rx is what the
// network sent the guest, Tx what the guest sent (dropped frames
// included). Bytes are the frames' own, without the stream's length
// prefix.
type NICCounters struct {
	RxBytes   uint64 `json:"rx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	TxPackets uint64 `json:"tx_packets"`
}

// Add returns the sum of c and o.
func (c NICCounters) Add(o NICCounters) NICCounters {
	return NICCounters{RxBytes: c.RxBytes + o.RxBytes, RxPackets: c.RxPackets + o.RxPackets,
		TxBytes: c.TxBytes + o.TxBytes, TxPackets: c.TxPackets + o.TxPackets}
}

// linkCounters are NICCounters updated as frames pass.
type linkCounters struct {
	rxBytes, rxPackets, txBytes, txPackets atomic.Uint64
}

// fromGuest counts one frame of n bytes the guest sent.
func (c *linkCounters) fromGuest(n uint32) {
	c.txPackets.Add(1)
	c.txBytes.Add(uint64(n))
}

// toGuest counts one frame of n bytes sent to the guest.
func (c *linkCounters) toGuest(n int) {
	c.rxPackets.Add(1)
	c.rxBytes.Add(uint64(n))
}

func (c *linkCounters) snapshot() NICCounters {
	return NICCounters{RxBytes: c.rxBytes.Load(), RxPackets: c.rxPackets.Load(),
		TxBytes: c.txBytes.Load(), TxPackets: c.txPackets.Load()}
}

// Counters returns the frames and bytes the network exchanged with QEMU so
// far.
func (n *Network) Counters() NICCounters { return n.counters.snapshot() }
