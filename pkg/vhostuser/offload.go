package vhostuser

import "encoding/binary"

const (
	protoTCP = 6
	protoUDP = 17
)

// ipv4 is what the offloads need of an Ethernet frame's IPv4 packet.
type ipv4 struct {
	ihl    int // IPv4 header length
	l4     int // offset of the transport header in the frame
	proto  byte
	tcpLen int // TCP header length, for TCP
}

// parseIPv4 reads the headers of an Ethernet frame carrying IPv4, checking
// that they lie within it.
func parseIPv4(d []byte) (ipv4, bool) {
	if len(d) < 14+20 || binary.BigEndian.Uint16(d[12:]) != 0x0800 {
		return ipv4{}, false
	}
	ihl := int(d[14]&0xf) * 4
	if ihl < 20 || len(d) < 14+ihl {
		return ipv4{}, false
	}
	p := ipv4{ihl: ihl, l4: 14 + ihl, proto: d[14+9]}
	switch p.proto {
	case protoTCP:
		if len(d) < p.l4+20 {
			return ipv4{}, false
		}
		p.tcpLen = int(d[p.l4+12]>>4) * 4
		if p.tcpLen < 20 || len(d) < p.l4+p.tcpLen {
			return ipv4{}, false
		}
	case protoUDP:
		if len(d) < p.l4+8 {
			return ipv4{}, false
		}
	}
	return p, true
}

// sum is the ones' complement sum of b, added to initial, folded.
func sum(b []byte, initial uint32) uint16 {
	s := initial
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// completeChecksum finishes a partial checksum, as a NIC does: the sum of
// everything from start (the field holds the pseudo-header's sum),
// complemented, at start+off.
func completeChecksum(d []byte, start, off int) {
	if start+off+2 > len(d) {
		return
	}
	binary.BigEndian.PutUint16(d[start+off:], ^sum(d[start:], 0))
}

// segmentTCP cuts a TCP frame of more than one segment into frames of at
// most mss bytes of payload each, with their own lengths, IPv4 ids,
// sequence numbers and whole checksums: what a NIC does for a guest that
// takes no segmentation offload.
func segmentTCP(d []byte, ip ipv4, mss int) [][]byte {
	hl := ip.l4 + ip.tcpLen
	payload := d[hl:]
	seq := binary.BigEndian.Uint32(d[ip.l4+4:])
	id := binary.BigEndian.Uint16(d[14+4:])
	flags := d[ip.l4+13]
	var segs [][]byte
	for off, i := 0, 0; off < len(payload); off, i = off+mss, i+1 {
		end := min(off+mss, len(payload))
		s := make([]byte, hl+end-off)
		copy(s, d[:hl])
		copy(s[hl:], payload[off:end])
		h := s[14:]
		binary.BigEndian.PutUint16(h[2:], uint16(len(s)-14))
		binary.BigEndian.PutUint16(h[4:], id+uint16(i))
		binary.BigEndian.PutUint16(h[10:], 0)
		binary.BigEndian.PutUint16(h[10:], ^sum(h[:ip.ihl], 0))
		t := s[ip.l4:]
		binary.BigEndian.PutUint32(t[4:], seq+uint32(off))
		if end < len(payload) {
			t[13] = flags &^ 0x09 // FIN and PSH only on the last
		}
		binary.BigEndian.PutUint16(t[16:], 0)
		var pseudo uint32
		pseudo += uint32(binary.BigEndian.Uint16(h[12:])) + uint32(binary.BigEndian.Uint16(h[14:]))
		pseudo += uint32(binary.BigEndian.Uint16(h[16:])) + uint32(binary.BigEndian.Uint16(h[18:]))
		pseudo += protoTCP + uint32(len(t))
		binary.BigEndian.PutUint16(t[16:], ^sum(t, pseudo))
		segs = append(segs, s)
	}
	return segs
}
