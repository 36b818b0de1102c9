package usernet

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TestClassify: admission tells DHCP (and any UDP fragment) and ARP from the
// rest by the frame's first classifyPrefix bytes, as receive passes them.
func TestClassify(t *testing.T) {
	discover, err := dhcpv4.NewDiscovery(net.HardwareAddr(guestMAC))
	if err != nil {
		t.Fatal(err)
	}
	dhcp := dhcpFrame(discover)
	fragment := append([]byte(nil), dhcp...)
	ip := header.IPv4(fragment[header.EthernetMinimumSize:])
	ip.SetFlagsFragmentOffset(0, 8)
	otherUDP := append([]byte(nil), dhcp...)
	header.UDP(otherUDP[header.EthernetMinimumSize+header.IPv4MinimumSize:]).SetDestinationPort(53)
	syn := synFrame(make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+header.TCPMinimumSize),
		netip.MustParseAddrPort("10.0.2.15:40000"), netip.MustParseAddrPort("10.0.2.67:67"), 1)
	for _, c := range []struct {
		name  string
		frame []byte
		want  frameKind
	}{
		{"DHCP", dhcp, frameDHCP},
		{"UDP fragment", fragment, frameDHCP},
		{"UDP to another port", otherUDP, frameOther},
		{"TCP to port 67", syn, frameOther},
		{"ARP", arpFrame(net.HardwareAddr(guestMAC), netip.MustParseAddr("10.0.2.15"), netip.MustParseAddr("10.0.2.2")), frameARP},
		{"runt", dhcp[:10], frameOther},
		{"truncated UDP", dhcp[:header.EthernetMinimumSize+header.IPv4MinimumSize+2], frameDHCP},
	} {
		if got := classify(c.frame[:min(len(c.frame), classifyPrefix)]); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
}

// TestAdmissionBurst: a guest's DHCP and ARP up to the bursts all get
// through at once, and the next frame beyond does not.
func TestAdmissionBurst(t *testing.T) {
	discover, err := dhcpv4.NewDiscovery(net.HardwareAddr(guestMAC))
	if err != nil {
		t.Fatal(err)
	}
	a := newAdmission()
	start := time.Now()
	for _, c := range []struct {
		frame []byte
		burst int
		rate  float64
	}{
		{dhcpFrame(discover), dhcpBurst, dhcpRate},
		{arpFrame(net.HardwareAddr(guestMAC), netip.MustParseAddr("10.0.2.15"), netip.MustParseAddr("10.0.2.2")), arpBurst, arpRate},
	} {
		for i := range c.burst {
			if !a.admit(c.frame) {
				t.Fatalf("frame %d of a burst of %d dropped", i+1, c.burst)
			}
		}
		// Within the time the loop took the bucket refilled by at most
		// rate times that; past those, a frame is dropped.
		extra := int(c.rate*time.Since(start).Seconds()) + 1
		dropped := false
		for range extra + 1 {
			dropped = dropped || !a.admit(c.frame)
		}
		if !dropped {
			t.Errorf("%d frames beyond a burst of %d all taken", extra+1, c.burst)
		}
	}
	if !a.admit(make([]byte, 54)) {
		t.Error("a frame other than DHCP or ARP dropped")
	}
}
