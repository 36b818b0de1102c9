// Package domain is minivirt's domain model: libvirt's domain XML, read and
// written by libvirt's own Go binding of its schema (libvirt.org/go/libvirtxml),
// plus what minivirt adds: defaults, its rules with errors that name the
// element and value, the vmchannel, and the libvirt export.
//
// Nothing is dropped or misread without a word. Parse compares what the
// document holds with what the model keeps and refuses, naming it, any
// element or attribute the model would lose; Validate puts every element in
// one of three classes (acted on, kept with a warning, refused) and refuses
// what minivirt cannot honour. No XML text is rewritten: the model writes the
// document.
//
// The vmchannel is minivirt's own, so it travels in libvirt's place for an
// application's data: a <vmchannels> element in <metadata> under minivirt's
// namespace (Namespace). The form of the first release, an
// <interface type='vmchannel'> among the devices, is still read, and written
// back in the metadata form.
//
// The package does no I/O of its own: bytes go in, a model comes out.
package domain

import (
	"encoding/xml"
	"net/netip"

	"libvirt.org/go/libvirtxml"
)

// Namespace is minivirt's XML namespace, for its element in <metadata>.
const Namespace = "https://github.com/minivirt/minivirt/xmlns/domain/1"

// Defaults of the user-mode network, as QEMU's user network (libslirp) has them.
var (
	// UserNet is the guest network of a user-mode NIC.
	UserNet = netip.MustParsePrefix("10.0.2.0/24")
	// DefaultVMChannelAddress is where a vmchannel listens when no address is given.
	DefaultVMChannelAddress = netip.MustParseAddr("10.0.2.4")
	// GatewayAddress is the user network's gateway (and, for QEMU's, the host).
	GatewayAddress = netip.MustParseAddr("10.0.2.2")
	// GuestAddress is the address the user network gives the guest by DHCP.
	GuestAddress = netip.MustParseAddr("10.0.2.15")
)

// Domain is one virtual machine definition: libvirt's model, and what
// minivirt adds to it.
type Domain struct {
	libvirtxml.Domain
	// Ext is minivirt's own data, kept in <metadata>: the vmchannels and
	// the network that carries them.
	Ext Extension

	uuidGenerated bool
	// dropped names what the document held that the model does not keep.
	dropped []string
	// otherMetadata are the other applications' elements in <metadata>,
	// each exactly as it was read.
	otherMetadata []string
}

// Extension is minivirt's element in <metadata>.
type Extension struct {
	XMLName xml.Name `xml:"https://github.com/minivirt/minivirt/xmlns/domain/1 vmchannels"`
	// Network carries the vmchannels: NetworkNetstack or NetworkSlirp;
	// empty for the default (see Domain.Network).
	Network string `xml:"network,attr,omitempty"`
	// MTU is the link MTU of minivirt's own network (netstack), default
	// 65520; QEMU's user network has 1500.
	MTU uint `xml:"mtu,attr,omitempty"`
	// Backend is how QEMU's NIC reaches netstack: a NetBackend, empty for
	// the default (see Domain.NetBackend).
	Backend    string         `xml:"backend,attr,omitempty"`
	VMChannels []ExtVMChannel `xml:"vmchannel"`
	Forwards   []ExtForward   `xml:"forward"`
}

func (e Extension) empty() bool {
	return e.Network == "" && e.MTU == 0 && e.Backend == "" && len(e.VMChannels) == 0 && len(e.Forwards) == 0
}

// ExtVMChannel is one <vmchannel> of minivirt's metadata. With a path it is
// a vmchannel of its own; without one it holds the options of the libvirt
// guestfwd <channel> on the same address and port.
type ExtVMChannel struct {
	Address        string `xml:"address,attr,omitempty"`
	Port           uint   `xml:"port,attr"`
	Path           string `xml:"path,attr,omitempty"`
	Proxy          string `xml:"proxy,attr,omitempty"`
	MaxConnections uint   `xml:"maxconnections,attr,omitempty"`
}

// Networks that can carry vmchannels.
const (
	// NetworkSlirp is QEMU's user network (libslirp) with one guestfwd rule
	// per channel; QEMU spawns minivirt's helper per guest connection.
	NetworkSlirp = "slirp"
	// NetworkNetstack is minivirt's own user network, a TCP/IP stack in the
	// supervisor: no process per connection, no NAT.
	NetworkNetstack = "netstack"
)

// Proxy protocol choices for a vmchannel.
const (
	ProxyNone = ""
	ProxyV2   = "v2"
)

// DefaultMaxConnections is a vmchannel's limit of concurrent guest
// connections when the definition sets none: enough for a busy guest, small
// enough that a runaway guest cannot exhaust the host's descriptors.
const DefaultMaxConnections = 256

// VMChannel is one guest TCP address:port relayed to a host Unix socket, one
// host connection for every guest connection. It comes from minivirt's
// metadata or from a libvirt guestfwd <channel>.
//
// It is normalised once, when a domain is read (VMChannels), whichever XML
// form it came from, and passed on as this value everywhere: the relay, the
// network, the control protocol, status and the command line's tables.
type VMChannel struct {
	Address        netip.Addr `json:"address"`
	Port           uint16     `json:"port"`
	Path           string     `json:"path"`
	Proxy          string     `json:"proxy,omitempty"` // ProxyNone or ProxyV2
	MaxConnections int        `json:"max_connections"`
}

// AddrPort is the guest address and port the channel listens on: what
// tells it from the domain's other channels.
func (vc VMChannel) AddrPort() netip.AddrPort { return netip.AddrPortFrom(vc.Address, vc.Port) }

// VirtioPort is a virtio-serial port whose host socket minivirt binds.
type VirtioPort struct {
	Name string
	Path string // empty: minivirt picks one in the domain's run directory
}

// UUIDGenerated reports whether Parse made up the uuid because the XML had none.
func (d *Domain) UUIDGenerated() bool { return d.uuidGenerated }
