package domain

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ExtForward is one <forward> of minivirt's metadata: connections to a host
// TCP address (listen) or a host Unix socket (path) reach the guest's TCP
// port, one guest connection for every host connection.
type ExtForward struct {
	Port           uint   `xml:"port,attr"`
	Listen         string `xml:"listen,attr,omitempty"`
	Path           string `xml:"path,attr,omitempty"`
	MaxConnections uint   `xml:"maxconnections,attr,omitempty"`
}

// Forward is an inbound forward: host connections to Listen (TCP) or Path
// (a Unix socket) go to the guest's TCP port GuestPort.
type Forward struct {
	GuestPort      uint16         `json:"guest_port"`
	Listen         netip.AddrPort `json:"listen,omitzero"`
	Path           string         `json:"path,omitempty"`
	MaxConnections int            `json:"max_connections"`
}

// Name names a forward by its host side: "tcp:127.0.0.1:2222" or
// "unix:/run/web.sock".
func (f Forward) Name() string {
	if f.Path != "" {
		return "unix:" + f.Path
	}
	return "tcp:" + f.Listen.String()
}

// ParseListen reads a host TCP listen address: "PORT" (on 127.0.0.1) or
// "ADDR:PORT".
func ParseListen(s string) (netip.AddrPort, error) {
	if p, err := strconv.ParseUint(s, 10, 16); err == nil {
		if p == 0 {
			return netip.AddrPort{}, fmt.Errorf("forward listen %q: the port must be 1-65535", s)
		}
		return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(p)), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil || ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("forward listen %q: must be PORT or ADDR:PORT, such as 2222 or 127.0.0.1:2222", s)
	}
	return ap, nil
}

// Forwards returns the domain's inbound forwards: minivirt's own, then
// libvirt's <portForward> ranges on the user interface. Call it on a
// validated domain.
func (d *Domain) Forwards() []Forward {
	var out []Forward
	for _, e := range d.Ext.Forwards {
		f := Forward{GuestPort: uint16(e.Port), Path: e.Path, MaxConnections: DefaultMaxConnections}
		if e.Listen != "" {
			f.Listen, _ = ParseListen(e.Listen)
		}
		if e.MaxConnections != 0 {
			f.MaxConnections = int(e.MaxConnections)
		}
		out = append(out, f)
	}
	if nic, ok := d.userInterface(); ok {
		for _, pf := range nic.PortForward {
			addr := netip.MustParseAddr("127.0.0.1")
			if pf.Address != "" {
				addr, _ = netip.ParseAddr(pf.Address)
			}
			for _, r := range pf.Ranges {
				end := max(r.End, r.Start)
				to := r.To
				if to == 0 {
					to = r.Start
				}
				for p := r.Start; p <= end; p++ {
					out = append(out, Forward{GuestPort: uint16(to + p - r.Start), Listen: netip.AddrPortFrom(addr, uint16(p)),
						MaxConnections: DefaultMaxConnections})
				}
			}
		}
	}
	return out
}

// AddForward adds a forward of minivirt's own and validates the result; on
// error the domain is unchanged.
func (d *Domain) AddForward(f Forward) (Forward, error) {
	e := ExtForward{Port: uint(f.GuestPort), Path: f.Path}
	if f.Listen.IsValid() {
		e.Listen = f.Listen.String()
	}
	if f.MaxConnections != 0 && f.MaxConnections != DefaultMaxConnections {
		e.MaxConnections = uint(f.MaxConnections)
	}
	before := d.Ext.Forwards
	d.Ext.Forwards = append(append([]ExtForward(nil), before...), e)
	if err := d.Validate(); err != nil {
		d.Ext.Forwards = before
		return Forward{}, err
	}
	// Forwards lists minivirt's own first, in the order added; QEMU's
	// portForward ones follow.
	return d.Forwards()[len(d.Ext.Forwards)-1], nil
}

// RemoveForward removes minivirt's forward to guest port (on host, when
// given: "ADDR:PORT", "PORT" or a socket path) and returns it. It fails when
// none or several match.
func (d *Domain) RemoveForward(port uint16, host string) (Forward, error) {
	var keep []ExtForward
	var gone []Forward
	for _, e := range d.Ext.Forwards {
		match := e.Port == uint(port)
		if match && host != "" {
			if strings.HasPrefix(host, "/") {
				match = e.Path == host
			} else {
				want, err := ParseListen(host)
				got, _ := ParseListen(e.Listen)
				match = err == nil && e.Listen != "" && got == want
			}
		}
		if match {
			f := Forward{GuestPort: port, Path: e.Path, MaxConnections: DefaultMaxConnections}
			if e.Listen != "" {
				f.Listen, _ = ParseListen(e.Listen)
			}
			gone = append(gone, f)
			continue
		}
		keep = append(keep, e)
	}
	switch len(gone) {
	case 0:
		return Forward{}, fmt.Errorf("forward to guest port %d: domain %s has no such forward of minivirt's (a <portForward> is changed in the XML)", port, d.Name)
	case 1:
		d.Ext.Forwards = keep
		return gone[0], nil
	}
	return Forward{}, fmt.Errorf("forward to guest port %d: there are several; name one with --listen or --path", port)
}

// validateForwards checks minivirt's forwards and libvirt's port forwards.
func (ck *checker) validateForwards() error {
	d := ck.d
	hosts := map[string]bool{}
	for _, e := range d.Ext.Forwards {
		where := fmt.Sprintf("forward to guest port %d", e.Port)
		if e.Port < 1 || e.Port > 65535 {
			return fmt.Errorf("%s: the port must be 1-65535", where)
		}
		switch {
		case (e.Listen == "") == (e.Path == ""):
			return fmt.Errorf("%s: give listen='[ADDR:]PORT' (TCP on the host) or path='/unix.sock', one of them", where)
		case e.Listen != "":
			if _, err := ParseListen(e.Listen); err != nil {
				return err
			}
		default:
			if err := socketPath(where+" path", e.Path); err != nil {
				return err
			}
			if d.Network() != NetworkNetstack {
				return fmt.Errorf("%s path %s: a Unix-socket forward needs minivirt's own network (netstack); QEMU's user network forwards only TCP (hostfwd): use listen='PORT', or network='netstack'", where, e.Path)
			}
		}
		if e.MaxConnections > 65535 {
			return fmt.Errorf("%s maxconnections %d: must be 1-65535", where, e.MaxConnections)
		}
	}
	if nic, ok := d.userInterface(); ok {
		for _, pf := range nic.PortForward {
			where := "interface portForward"
			if err := ck.unsupported(where, unhandled(&pf, "Proto", "Address", "Ranges")); err != nil {
				return err
			}
			if err := oneOf(where+" proto", pf.Proto, []string{"tcp"}); err != nil {
				return err
			}
			if a, err := netip.ParseAddr(pf.Address); pf.Address != "" && (err != nil || a.Zone() != "") {
				return fmt.Errorf("%s address %q: must be an IP address such as 127.0.0.1", where, pf.Address)
			}
			if len(pf.Ranges) == 0 {
				return fmt.Errorf("%s: needs a <range start='HOSTPORT' to='GUESTPORT'/>", where)
			}
			for _, r := range pf.Ranges {
				if r.Exclude != "" {
					ck.unsupported(where+" range", []string{"attribute exclude"})
				}
				end := max(r.End, r.Start)
				to := r.To
				if to == 0 {
					to = r.Start
				}
				if r.Start < 1 || end > 65535 || to+end-r.Start > 65535 {
					return fmt.Errorf("%s range %d-%d to %d: ports must be 1-65535", where, r.Start, end, to)
				}
			}
		}
	}
	for _, f := range d.Forwards() {
		if hosts[f.Name()] {
			return fmt.Errorf("forward %s: used twice", f.Name())
		}
		hosts[f.Name()] = true
	}
	return nil
}
