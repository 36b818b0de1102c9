package domain

import (
	"encoding/xml"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// XML writes the definition in minivirt's form. Reading it back with Parse and
// writing it again gives the same bytes.
func (d *Domain) XML() ([]byte, error) {
	out, err := xml.MarshalIndent(d, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("writing domain XML: %w", err)
	}
	// Written as encoding/xml writes it (an empty element as <a></a>, as
	// libvirtxml does): no text is rewritten after marshalling.
	return append(out, '\n'), nil
}

// LibvirtXML writes the definition in libvirt's own form: every vmchannel
// becomes a guestfwd <channel> beside an <interface type='user'>, and
// minivirt's own attributes (proxy, maxconnections) are dropped. libvirt's
// guestfwd merges all guest connections into one stream; the export keeps the
// addresses and paths, not minivirt's per-connection semantics.
func (d *Domain) LibvirtXML() ([]byte, error) {
	c := d.clone()
	var nics []Interface
	var fwd []Channel
	for _, nic := range c.Devices.Interfaces {
		if nic.Type != "vmchannel" {
			nics = append(nics, nic)
		}
	}
	for _, vc := range d.VMChannels() {
		fwd = append(fwd, Channel{
			Type:   "unix",
			Source: ChannelSource{Mode: "connect", Path: vc.Path},
			Target: ChannelTarget{Type: "guestfwd", Address: vc.Address.String(), Port: strconv.Itoa(int(vc.Port))},
		})
	}
	if nic, ok := d.UserNIC(); ok && nic.Isolated {
		nics = append(nics, Interface{Type: "user", Model: &Model{Type: nic.Model}})
	}
	for _, ch := range c.Devices.Channels {
		if ch.Target.Type != "guestfwd" {
			fwd = append(fwd, ch)
		}
	}
	c.Devices.Interfaces, c.Devices.Channels = nics, fwd
	c.Devices.VMChannels = nil // minivirt's own: libvirt's schema has no such element
	return c.XML()
}

func (d *Domain) clone() *Domain {
	c := *d
	c.Devices.Interfaces = append([]Interface(nil), d.Devices.Interfaces...)
	c.Devices.Channels = append([]Channel(nil), d.Devices.Channels...)
	return &c
}

// Warnings names what the definition holds but minivirt does not act on.
// The elements are kept and written back; they just have no effect.
func (d *Domain) Warnings() []string {
	var kept []string
	for _, r := range d.Extra {
		kept = append(kept, r.XMLName.Local)
	}
	for _, r := range d.OS.Extra {
		kept = append(kept, "os/"+r.XMLName.Local)
	}
	for _, r := range d.Devices.Extra {
		kept = append(kept, "devices/"+r.XMLName.Local)
	}
	if len(kept) == 0 {
		return nil
	}
	sort.Strings(kept)
	kept = compact(kept)
	return []string{"kept but not acted on: " + strings.Join(kept, ", ")}
}

func compact(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

// AddVMChannel adds a vmchannel as an <interface type='vmchannel'> and
// validates the result; on error the domain is unchanged.
func (d *Domain) AddVMChannel(vc VMChannel) error {
	if !vc.Address.IsValid() {
		vc.Address = DefaultVMChannelAddress
	}
	nic := Interface{
		Type:   "vmchannel",
		Source: &InterfaceSource{Address: vc.Address.String(), Port: strconv.Itoa(int(vc.Port))},
		Target: &InterfaceTarget{Path: vc.Path, Proxy: vc.Proxy},
	}
	if vc.MaxConnections != 0 {
		nic.Target.MaxConnections = strconv.Itoa(vc.MaxConnections)
	}
	before := d.Devices.Interfaces
	d.Devices.Interfaces = append(append([]Interface(nil), before...), nic)
	if err := d.Validate(); err != nil {
		d.Devices.Interfaces = before
		return err
	}
	return nil
}

// RemoveVMChannel removes the vmchannel on port (and address, when valid),
// whichever form defines it. It fails when none or several match.
func (d *Domain) RemoveVMChannel(port uint16, addr netip.Addr) error {
	match := func(a, p string) bool {
		return p == strconv.Itoa(int(port)) && (!addr.IsValid() || a == addr.String())
	}
	var nics []Interface
	var chans []Channel
	found := 0
	for _, nic := range d.Devices.Interfaces {
		if nic.Type == "vmchannel" && nic.Source != nil && match(nic.Source.Address, nic.Source.Port) {
			found++
			continue
		}
		nics = append(nics, nic)
	}
	for _, ch := range d.Devices.Channels {
		if ch.Target.Type == "guestfwd" && match(ch.Target.Address, ch.Target.Port) {
			found++
			continue
		}
		chans = append(chans, ch)
	}
	switch {
	case found == 0:
		return fmt.Errorf("vmchannel port %d: domain %s has no such vmchannel", port, d.Name)
	case found > 1:
		return fmt.Errorf("vmchannel port %d: on several addresses; name one with --address", port)
	}
	d.Devices.Interfaces, d.Devices.Channels = nics, chans
	return nil
}
