package domain

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// XML writes the definition in minivirt's form: libvirt's domain XML, as
// libvirtxml writes it, with minivirt's vmchannels in <metadata>. Reading
// it back with Parse and writing it again gives the same bytes.
func (d *Domain) XML() ([]byte, error) {
	meta, err := d.metadata()
	if err != nil {
		return nil, err
	}
	lx := d.Domain
	lx.Metadata = nil
	if meta != nil {
		lx.Metadata = &libvirtxml.DomainMetadata{XML: *meta}
	}
	out, err := lx.Marshal()
	if err != nil {
		return nil, fmt.Errorf("writing domain XML: %w", err)
	}
	return append([]byte(out), '\n'), nil
}

// LibvirtNetwork is how an exported domain reaches minivirt's network:
// the Unix socket `minivirt network serve` listens on, and its MTU.
type LibvirtNetwork struct {
	Socket string
	MTU    int
}

// ErrNotMovable wraps the reason a domain cannot be moved to libvirt with
// working vmchannels.
var ErrNotMovable = errors.New("cannot be moved to libvirt with working vmchannels")

// vhostUserAlias is the libvirt alias of the exported domain's vhost-user
// NIC (libvirt takes user aliases with the prefix "ua-").
const vhostUserAlias = "ua-minivirt-net0"

// netdevID is the id of the exported domain's minivirt network device.
const netdevID = "minivirt-net0"

// LibvirtXML writes the definition for a real libvirtd. libvirt 9.0 does not
// carry a guestfwd <channel> to the guest (it becomes a -netdev with no
// device on it), so the vmchannels travel the way minivirt's own network
// does: a virtio NIC on libvirt's vhost-user interface (or, for the stream
// backend, through <qemu:commandline>, a -netdev stream) that connects to
// net.Socket, where `minivirt network serve` runs the network
// and the relay, one host connection for every guest connection. libvirt's
// seccomp sandbox stays on: QEMU spawns nothing. A domain whose vmchannels
// share a user network with NAT cannot be moved so; the error says why.
func (d *Domain) LibvirtXML(net LibvirtNetwork) ([]byte, error) {
	c := *d
	devices := *d.Devices
	c.Devices = &devices
	if d.needsSharedMemory() {
		// minivirt shares a virtiofs guest's RAM by itself; libvirt wants
		// it said (it refuses to start 'virtiofs' without shared memory).
		mb := libvirtxml.DomainMemoryBacking{}
		if d.MemoryBacking != nil {
			mb = *d.MemoryBacking
		}
		if mb.MemorySource == nil && mb.MemoryHugePages == nil {
			mb.MemorySource = &libvirtxml.DomainMemorySource{Type: "memfd"}
		}
		if mb.MemoryAccess == nil {
			mb.MemoryAccess = &libvirtxml.DomainMemoryAccess{Mode: "shared"}
		}
		c.MemoryBacking = &mb
	}
	vcs := d.VMChannels()
	if len(vcs) == 0 {
		return c.XML()
	}
	if _, ok := d.userInterface(); ok {
		return nil, fmt.Errorf("domain %s %w: its vmchannels share the user network with NAT (<interface type='user'>), and minivirt's network has no NAT; remove that interface to move it", d.Name, ErrNotMovable)
	}
	if net.Socket == "" {
		return nil, fmt.Errorf("domain %s: no socket for minivirt's network", d.Name)
	}
	var chans []libvirtxml.DomainChannel
	for _, ch := range d.Devices.Channels {
		if ch.Target == nil || ch.Target.GuestFWD == nil { // guestfwd: served by minivirt's network
			chans = append(chans, ch)
		}
	}
	devices.Channels = chans
	// The vmchannels themselves stay in minivirt's metadata, where
	// `minivirt network serve` and a later import find them.
	c.Ext.VMChannels = nil
	for _, vc := range vcs {
		e := ExtVMChannel{Address: vc.Address.String(), Port: uint(vc.Port), Path: vc.Path, Proxy: vc.Proxy}
		if vc.MaxConnections != DefaultMaxConnections {
			e.MaxConnections = uint(vc.MaxConnections)
		}
		c.Ext.VMChannels = append(c.Ext.VMChannels, e)
	}
	c.Ext.Network = NetworkNetstack
	if d.vhostUser() {
		// libvirt's own vhost-user interface: QEMU connects to the socket
		// `minivirt network serve` listens on, and libvirt shares the
		// guest's RAM by memfd as the device needs (memoryBacking above).
		devices.Interfaces = append(slices.Clone(devices.Interfaces), libvirtxml.DomainInterface{
			Source: &libvirtxml.DomainInterfaceSource{VHostUser: &libvirtxml.DomainInterfaceSourceVHostUser{
				Chardev: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Path: net.Socket, Mode: "client"}}}},
			Model: &libvirtxml.DomainInterfaceModel{Type: "virtio"},
			Alias: &libvirtxml.DomainAlias{Name: vhostUserAlias},
		})
		// libvirt 9.0 sets a vhost-user interface's <mtu> on a host
		// device it does not have ("Cannot set interface MTU on
		// '(null)'"): the MTU goes to QEMU's device as minivirt gives it.
		props := []libvirtxml.DomainQEMUOverrideProperty{{Name: "host_mtu", Type: "unsigned", Value: fmt.Sprint(net.MTU)}}
		if d.Type != "kvm" {
			// As minivirt does under TCG (launcher): QEMU 7.2 crashes as a
			// vhost-user NIC with MSI-X starts without KVM's irqfd.
			props = append(props, libvirtxml.DomainQEMUOverrideProperty{Name: "vectors", Type: "unsigned", Value: "0"})
		}
		o := &libvirtxml.DomainQEMUOverride{}
		if d.QEMUOverride != nil {
			o.Devices = slices.Clone(d.QEMUOverride.Devices)
		}
		o.Devices = append(o.Devices, libvirtxml.DomainQEMUOverrideDevice{Alias: vhostUserAlias,
			Frontend: libvirtxml.DomainQEMUOverrideFrontend{Properties: props}})
		c.QEMUOverride = o
		return c.XML()
	}
	cl := &libvirtxml.DomainQEMUCommandline{}
	if d.QEMUCommandline != nil {
		*cl = *d.QEMUCommandline
		cl.Args = append([]libvirtxml.DomainQEMUCommandlineArg(nil), d.QEMUCommandline.Args...)
	}
	cl.Args = append(cl.Args,
		libvirtxml.DomainQEMUCommandlineArg{Value: "-netdev"},
		libvirtxml.DomainQEMUCommandlineArg{Value: "stream,id=" + netdevID + ",server=off,addr.type=unix,addr.path=" + strings.ReplaceAll(net.Socket, ",", ",,")},
		libvirtxml.DomainQEMUCommandlineArg{Value: "-device"},
		// An address of its own: libvirt places its devices in the low slots.
		libvirtxml.DomainQEMUCommandlineArg{Value: fmt.Sprintf("virtio-net-pci,netdev=%s,host_mtu=%d,addr=0x10", netdevID, net.MTU)},
	)
	c.QEMUCommandline = cl
	return c.XML()
}
