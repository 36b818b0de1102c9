package usernet

import (
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/minivirt/minivirt/pkg/domain"
)

// serveDHCP answers DHCP on the NIC as QEMU's user network would for its one
// guest: 10.0.2.15/24, router 10.0.2.2, no DNS server (there is none).
// onLease is told of each address it acknowledges.
func serveDHCP(s *stack.Stack, nic tcpip.NICID, mtu uint16, onLease func(Lease)) (*server4.Server, error) {
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
	conn := gonet.NewUDPConn(&wq, ep)
	mask := net.CIDRMask(domain.UserNet.Bits(), 32)
	handle := func(c net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
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
			dhcpv4.WithOption(dhcpv4.OptSubnetMask(mask)),
			dhcpv4.WithOption(dhcpv4.OptRouter(domain.GatewayAddress.AsSlice())),
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(24*time.Hour)),
			dhcpv4.WithOption(dhcpv4.Option{Code: dhcpv4.OptionInterfaceMTU, Value: dhcpv4.Uint16(mtu)}),
		)
		if err != nil {
			return
		}
		if _, err := c.WriteTo(reply.ToBytes(), peer); err == nil && kind == dhcpv4.MessageTypeAck {
			onLease(Lease{MAC: m.ClientHWAddr.String(), Address: netip.PrefixFrom(domain.GuestAddress, domain.UserNet.Bits())})
		}
	}
	srv, err := server4.NewServer("", nil, handle, server4.WithConn(conn))
	if err != nil {
		conn.Close()
		return nil, err
	}
	go srv.Serve()
	return srv, nil
}
