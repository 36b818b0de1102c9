package usernet

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/minivirt/minivirt/pkg/domain"
)

// maxDHCPMessage is the longest DHCP message the server reads: the most a
// UDP datagram on the link can carry.
const maxDHCPMessage = 1 << 16

// dhcpServer answers DHCP on the NIC as QEMU's user network would for its
// one guest: 10.0.2.15/24, router 10.0.2.2, no DNS server (there is none).
//
// It reads and answers one message at a time in one goroutine. server4's
// Serve starts a goroutine for every packet, as many as a guest cares to
// send; here what the guest sends faster than it is answered waits in the
// UDP endpoint's bounded receive buffer or is dropped, and the frames
// reaching the endpoint at all are rate-limited (admission).
type dhcpServer struct {
	conn    *gonet.UDPConn
	mtu     uint16
	onLease func(Lease)
	closing atomic.Bool
	done    chan struct{}
}

// serveDHCP starts the DHCP server on the NIC; onLease is told of each
// address it acknowledges.
func serveDHCP(s *stack.Stack, nic tcpip.NICID, mtu uint16, onLease func(Lease)) (*dhcpServer, error) {
	var wq waiter.Queue
	ep, terr := s.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil, errorOf(terr)
	}
	ep.SocketOptions().SetBroadcast(true)
	if terr := ep.Bind(tcpip.FullAddress{NIC: nic, Port: dhcpv4.ServerPort}); terr != nil {
		ep.Close()
		return nil, errorOf(terr)
	}
	d := &dhcpServer{conn: gonet.NewUDPConn(&wq, ep), mtu: mtu, onLease: onLease, done: make(chan struct{})}
	go d.serve()
	return d, nil
}

func (d *dhcpServer) serve() {
	defer close(d.done)
	buf := make([]byte, maxDHCPMessage)
	for {
		n, peer, err := d.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, io.EOF) || d.closing.Load() {
				return
			}
			continue // an error the endpoint reported once, such as an ICMP one
		}
		m, err := dhcpv4.FromBytes(buf[:n])
		if err != nil {
			continue
		}
		upeer, ok := peer.(*net.UDPAddr)
		if !ok {
			continue
		}
		d.answer(upeer, m)
	}
}

// answer replies to a DISCOVER with an OFFER and to a REQUEST with an ACK,
// to peer or, when the client has no address yet, to the link's broadcast
// address (as server4 does).
func (d *dhcpServer) answer(peer *net.UDPAddr, m *dhcpv4.DHCPv4) {
	var kind dhcpv4.MessageType
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		kind = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		kind = dhcpv4.MessageTypeAck
	default:
		return
	}
	reply, err := dhcpv4.NewReplyFromRequest(m,
		dhcpv4.WithMessageType(kind),
		dhcpv4.WithYourIP(domain.GuestAddress.AsSlice()),
		dhcpv4.WithServerIP(domain.GatewayAddress.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(domain.GatewayAddress.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptSubnetMask(net.CIDRMask(domain.UserNet.Bits(), 32))),
		dhcpv4.WithOption(dhcpv4.OptRouter(domain.GatewayAddress.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(24*time.Hour)),
		dhcpv4.WithOption(dhcpv4.Option{Code: dhcpv4.OptionInterfaceMTU, Value: dhcpv4.Uint16(d.mtu)}),
	)
	if err != nil {
		return
	}
	if peer.IP == nil || peer.IP.To4().Equal(net.IPv4zero) {
		peer = &net.UDPAddr{IP: net.IPv4bcast, Port: peer.Port}
	}
	if _, err := d.conn.WriteTo(reply.ToBytes(), peer); err == nil && kind == dhcpv4.MessageTypeAck {
		d.onLease(Lease{MAC: m.ClientHWAddr.String(), Address: netip.PrefixFrom(domain.GuestAddress, domain.UserNet.Bits())})
	}
}

// Close stops the server and waits until it has answered its last message.
func (d *dhcpServer) Close() {
	d.closing.Store(true)
	d.conn.Close()
	<-d.done
}
