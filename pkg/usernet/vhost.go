package usernet

import (
	"context"
	"net"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/minivirt/minivirt/pkg/vhostuser"
)

// gsoLink is the NIC's link on a vhost-user device: the device completes
// and checks nothing for the stack, so the stack trusts the checksums of
// frames that come from guest memory and hands the device TCP segments of
// up to gsoMaxSize bytes with partial checksums (the guest, or the device
// for a guest that takes no offloads, segments and completes them).
type gsoLink struct {
	*channel.Endpoint
}

// gsoMaxSize bounds a segment the stack sends: its IPv4 packet, headers
// included, must fit IPv4's 65535 bytes.
const gsoMaxSize = 65535 - 60 - 60

func (gsoLink) GSOMaxSize() uint32 { return gsoMaxSize }

func offloadLink(ep *channel.Endpoint) stack.LinkEndpoint {
	ep.LinkEPCapabilities |= stack.CapabilityRXChecksumOffload
	ep.SupportedGSOKind = stack.HostGSOSupported
	return gsoLink{ep}
}

// ServeVhostUser is Serve for QEMU's vhost-user front-end on conn (the
// network must come from NewVhostUser): the guest's virtqueues are read
// and written here, in guest memory, with no frame through QEMU. logf
// reports what the guest gets wrong.
func (n *Network) ServeVhostUser(ctx context.Context, conn *net.UnixConn, logf func(format string, args ...any)) error {
	return vhostuser.Serve(ctx, conn, stackLink{n}, logf)
}

// stackLink is the network as a vhost-user device's link.
type stackLink struct{ n *Network }

func (l stackLink) Admit(head []byte) bool { return l.n.admit.admit(head) }

func (l stackLink) Deliver(frame []byte) {
	l.n.counters.fromGuest(uint32(len(frame)))
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(frame)})
	l.n.link.InjectInbound(0, pkt) // the protocol comes from the Ethernet header
	pkt.DecRef()
}

func (l stackLink) Next(ctx context.Context, wait bool) (vhostuser.Frame, bool) {
	var pkt *stack.PacketBuffer
	if wait {
		pkt = l.n.link.ReadContext(ctx)
	} else {
		pkt = l.n.link.Read()
	}
	if pkt == nil {
		return vhostuser.Frame{}, false
	}
	view := pkt.ToView()
	gso := pkt.GSOOptions
	pkt.DecRef()
	f := vhostuser.Frame{Data: view.AsSlice(), Release: view.Release}
	if gso.Type == stack.GSOTCPv4 {
		f.MSS = gso.MSS
	}
	f.PartialChecksum = gso.Type != stack.GSONone && gso.NeedsCsum
	l.n.counters.toGuest(len(f.Data))
	return f, true
}
