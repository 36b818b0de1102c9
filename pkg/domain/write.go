package domain

import (
	"fmt"
	"strconv"

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

// LibvirtXML writes the definition in libvirt's own form: every vmchannel
// becomes a guestfwd <channel> beside an <interface type='user'>, and
// minivirt's own options (proxy, maxconnections, network) are left out.
func (d *Domain) LibvirtXML() ([]byte, error) {
	c := *d
	devices := *d.Devices
	c.Devices = &devices
	var chans []libvirtxml.DomainChannel
	for _, vc := range d.VMChannels() {
		chans = append(chans, libvirtxml.DomainChannel{
			Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "connect", Path: vc.Path}},
			Target: &libvirtxml.DomainChannelTarget{GuestFWD: &libvirtxml.DomainChannelTargetGuestFWD{
				Address: vc.Address.String(), Port: strconv.Itoa(int(vc.Port))}},
		})
	}
	for _, ch := range d.Devices.Channels {
		if ch.Target == nil || ch.Target.GuestFWD == nil {
			chans = append(chans, ch)
		}
	}
	devices.Channels = chans
	if nic, ok := d.UserNIC(); ok && nic.Isolated {
		devices.Interfaces = append(append([]libvirtxml.DomainInterface(nil), devices.Interfaces...), libvirtxml.DomainInterface{
			Source: &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}},
			Model:  &libvirtxml.DomainInterfaceModel{Type: nic.Model},
		})
	}
	c.Ext = Extension{} // minivirt's own: libvirt would keep, not act on it
	return c.XML()
}
