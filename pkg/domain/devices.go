package domain

import (
	"fmt"
	"net/netip"
	"strconv"

	"libvirt.org/go/libvirtxml"
)

// VMChannels returns every vmchannel of the domain: minivirt's own, then
// libvirt's guestfwd channels (with their options from the metadata), in
// document order. Call it on a validated domain.
func (d *Domain) VMChannels() []VMChannel {
	var out []VMChannel
	options := map[netip.AddrPort]ExtVMChannel{}
	for _, e := range d.Ext.VMChannels {
		a, _ := netip.ParseAddr(e.Address)
		if e.Path == "" {
			options[netip.AddrPortFrom(a, uint16(e.Port))] = e
			continue
		}
		out = append(out, vmchannel(a, uint16(e.Port), e.Path, e.Proxy, e.MaxConnections))
	}
	for _, ch := range d.guestfwdChannels() {
		t := ch.Target.GuestFWD
		a, _ := netip.ParseAddr(t.Address)
		p, _ := strconv.ParseUint(t.Port, 10, 16)
		opt := options[netip.AddrPortFrom(a, uint16(p))]
		out = append(out, vmchannel(a, uint16(p), ch.Source.UNIX.Path, opt.Proxy, opt.MaxConnections))
	}
	return out
}

func vmchannel(a netip.Addr, port uint16, path, proxy string, maxConns uint) VMChannel {
	limit := DefaultMaxConnections
	if maxConns != 0 {
		limit = int(maxConns)
	}
	return VMChannel{Address: a, Port: port, Path: path, Proxy: proxy, MaxConnections: limit}
}

// guestfwdChannels are libvirt's <channel type='unix'> with a guestfwd target.
func (d *Domain) guestfwdChannels() []libvirtxml.DomainChannel {
	var out []libvirtxml.DomainChannel
	for _, ch := range d.Devices.Channels {
		if ch.Target != nil && ch.Target.GuestFWD != nil && ch.Source != nil && ch.Source.UNIX != nil {
			out = append(out, ch)
		}
	}
	return out
}

// VirtioPorts returns the virtio-serial ports whose sockets minivirt binds.
func (d *Domain) VirtioPorts() []VirtioPort {
	var out []VirtioPort
	for _, ch := range d.Devices.Channels {
		if ch.Target != nil && ch.Target.VirtIO != nil && ch.Source != nil && ch.Source.UNIX != nil && ch.Source.UNIX.Mode == "bind" {
			out = append(out, VirtioPort{Name: ch.Target.VirtIO.Name, Path: ch.Source.UNIX.Path})
		}
	}
	return out
}

// Network returns the network that carries the domain's vmchannels: the one
// the metadata names; else QEMU's user network when the domain has a user
// interface (it wants NAT); else minivirt's own.
func (d *Domain) Network() string {
	if d.Ext.Network != "" {
		return d.Ext.Network
	}
	if _, ok := d.userInterface(); ok {
		return NetworkSlirp
	}
	return NetworkNetstack
}

func (d *Domain) userInterface() (libvirtxml.DomainInterface, bool) {
	for _, nic := range d.Devices.Interfaces {
		if isUserNIC(nic) {
			return nic, true
		}
	}
	return libvirtxml.DomainInterface{}, false
}

// UserNIC describes the domain's user-mode NIC.
type UserNIC struct {
	Model string
	MAC   string
	Boot  uint // boot order, 0 for none
	// PCIAddr places the NIC at its PCI address (see PCIAddr), or "".
	PCIAddr string
	// Isolated is true for the NIC minivirt adds for vmchannels: the guest
	// reaches nothing but its vmchannels (QEMU's restrict=on).
	Isolated bool
}

// UserNIC returns the explicit <interface type='user'>, or the isolated one
// implied by vmchannels, or false when the domain has no network. The
// implied NIC is never written into the definition: it follows the
// vmchannels, so removing the last vmchannel removes it too.
func (d *Domain) UserNIC() (UserNIC, bool) {
	if nic, ok := d.userInterface(); ok {
		u := UserNIC{Model: "virtio"}
		if nic.Model != nil {
			u.Model = nic.Model.Type
		}
		if nic.MAC != nil {
			u.MAC = nic.MAC.Address
		}
		if nic.Boot != nil {
			u.Boot = nic.Boot.Order
		}
		u.PCIAddr = PCIAddr(nic.Address)
		return u, true
	}
	if d.NeedsNetwork() {
		return UserNIC{Model: "virtio", Isolated: true}, true
	}
	return UserNIC{}, false
}

// NeedsNetwork reports whether the domain's vmchannels or inbound forwards
// need a user network: an isolated one when it has no user interface.
func (d *Domain) NeedsNetwork() bool { return len(d.VMChannels()) > 0 || len(d.Forwards()) > 0 }

// AddVMChannel adds a vmchannel of minivirt's own and validates the result;
// on error the domain is unchanged.
func (d *Domain) AddVMChannel(vc VMChannel) (VMChannel, error) {
	e := ExtVMChannel{Port: uint(vc.Port), Path: vc.Path, Proxy: vc.Proxy}
	if vc.Address.IsValid() {
		e.Address = vc.Address.String()
	}
	if vc.MaxConnections != 0 {
		e.MaxConnections = uint(vc.MaxConnections)
	}
	before := d.Ext.VMChannels
	d.Ext.VMChannels = append(append([]ExtVMChannel(nil), before...), e)
	d.normaliseVMChannels()
	if !vc.Address.IsValid() {
		vc.Address, _ = netip.ParseAddr(d.Ext.VMChannels[len(d.Ext.VMChannels)-1].Address)
	}
	if err := d.Validate(); err != nil {
		d.Ext.VMChannels = before
		return VMChannel{}, err
	}
	// The channel as the domain now has it, defaults applied: wherever it
	// stands among the others (guestfwd channels are listed after these).
	for _, got := range d.VMChannels() {
		if got.Address == vc.Address && got.Port == vc.Port {
			return got, nil
		}
	}
	d.Ext.VMChannels = before
	return VMChannel{}, fmt.Errorf("vmchannel %s:%d: added but not found", vc.Address, vc.Port)
}

// RemoveVMChannel removes the vmchannel on port (and address, when valid),
// whichever form defines it, and returns it. It fails when none or several
// match.
func (d *Domain) RemoveVMChannel(port uint16, addr netip.Addr) (VMChannel, error) {
	var gone VMChannel
	for _, vc := range d.VMChannels() {
		if vc.Port == port && (!addr.IsValid() || vc.Address == addr) {
			gone = vc
		}
	}
	if err := d.removeVMChannel(port, addr); err != nil {
		return VMChannel{}, err
	}
	return gone, nil
}

func (d *Domain) removeVMChannel(port uint16, addr netip.Addr) error {
	match := func(a string, p uint64) bool {
		return p == uint64(port) && (!addr.IsValid() || a == addr.String())
	}
	var ext []ExtVMChannel
	var chans []libvirtxml.DomainChannel
	found := 0
	for _, ch := range d.Devices.Channels {
		if ch.Target != nil && ch.Target.GuestFWD != nil {
			p, _ := strconv.ParseUint(ch.Target.GuestFWD.Port, 10, 32)
			if match(ch.Target.GuestFWD.Address, p) {
				found++ // its options in the metadata go below
				continue
			}
		}
		chans = append(chans, ch)
	}
	for _, e := range d.Ext.VMChannels {
		if match(e.Address, uint64(e.Port)) {
			if e.Path != "" {
				found++
			}
			continue
		}
		ext = append(ext, e)
	}
	switch {
	case found == 0:
		return fmt.Errorf("vmchannel port %d: domain %s has no such vmchannel", port, d.Name)
	case found > 1:
		return fmt.Errorf("vmchannel port %d: on several addresses; name one with --address", port)
	}
	d.Devices.Channels, d.Ext.VMChannels = chans, ext
	return nil
}

// Clone returns a copy of the domain that changes to its vmchannels and
// forwards do not reach.
func (d *Domain) Clone() *Domain {
	c := *d
	c.Ext.VMChannels = append([]ExtVMChannel(nil), d.Ext.VMChannels...)
	c.Ext.Forwards = append([]ExtForward(nil), d.Ext.Forwards...)
	devices := *d.Devices
	devices.Channels = append(devices.Channels[:0:0], d.Devices.Channels...)
	c.Devices = &devices
	return &c
}

// DefaultMTU is the link MTU of minivirt's own network when the domain
// names none: the largest a virtio-net frame carries.
const DefaultMTU = 65520

// NetstackMTU is the link MTU of the domain's netstack.
func (d *Domain) NetstackMTU() uint32 {
	if d.Ext.MTU != 0 {
		return uint32(d.Ext.MTU)
	}
	return DefaultMTU
}
