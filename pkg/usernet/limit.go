package usernet

import (
	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/time/rate"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The rates at which the network takes the guest's DHCP and ARP frames. A
// guest sends a handful of DHCP messages when it boots and one when it
// renews, and ARPs once for each address it talks to, again every half
// minute or so; the bursts let it do all of that at once without losing a
// frame. Beyond them a guest can only be flooding, and every frame of a
// flood it gets through costs the supervisor a parsed message, a reply and
// (for DHCP) a handler call; dropped before the stack sees them they cost
// a length read and a token-bucket check.
const (
	dhcpRate  = 10  // DHCP frames a second, sustained
	dhcpBurst = 64  // DHCP frames at once
	arpRate   = 100 // ARP frames a second, sustained
	arpBurst  = 512 // ARP frames at once
)

// admission decides, frame by frame, before the stack parses anything,
// which of the guest's frames the network takes: DHCP and ARP at bounded
// rates, everything else as it comes (TCP meets the stack's own bounds:
// listen backlogs, SYN cookies, receive buffers). It is the guest's: one
// per network, shared by every Serve of it.
type admission struct {
	dhcp, arp *rate.Limiter
}

func newAdmission() *admission {
	return &admission{
		dhcp: rate.NewLimiter(dhcpRate, dhcpBurst),
		arp:  rate.NewLimiter(arpRate, arpBurst),
	}
}

// admit says whether the network takes an Ethernet frame from the guest,
// given its first classifyPrefix bytes (all of it if shorter).
func (a *admission) admit(frame []byte) bool {
	switch classify(frame) {
	case frameDHCP:
		return a.dhcp.Allow()
	case frameARP:
		return a.arp.Allow()
	}
	return true
}

// frameKind is what admission tells frames apart by.
type frameKind int

const (
	frameOther frameKind = iota
	frameDHCP            // UDP to the DHCP server's port, or a UDP fragment
	frameARP
)

// classify reads only the fixed header fields it needs, bounds-checked; it
// parses nothing the guest could make expensive.
func classify(frame []byte) frameKind {
	if len(frame) < header.EthernetMinimumSize {
		return frameOther // the stack drops it
	}
	switch header.Ethernet(frame).Type() {
	case header.ARPProtocolNumber:
		return frameARP
	case header.IPv4ProtocolNumber:
	default:
		return frameOther
	}
	ip := header.IPv4(frame[header.EthernetMinimumSize:])
	if len(ip) < header.IPv4MinimumSize || ip.Protocol() != uint8(header.UDPProtocolNumber) {
		return frameOther
	}
	// Any fragment of UDP counts as DHCP: reassembly must not be a way
	// round the limit, and no guest fragments UDP on a link of this MTU.
	if ip.More() || ip.FragmentOffset() != 0 {
		return frameDHCP
	}
	hl := int(ip.HeaderLength())
	if hl < header.IPv4MinimumSize || len(ip) < hl+header.UDPMinimumSize {
		return frameDHCP // malformed, and dropped by the stack; counted all the same
	}
	if header.UDP(ip[hl:]).DestinationPort() == dhcpv4.ServerPort {
		return frameDHCP
	}
	return frameOther
}
