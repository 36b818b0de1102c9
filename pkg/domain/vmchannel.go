package domain

import (
	"fmt"
	"libvirt.org/go/libvirtxml"
	"net/netip"
	"strconv"
	"strings"
)

// The rules of the vmchannels: libvirt's <channel> (guestfwd, and the virtio
// ports whose sockets minivirt binds), minivirt's own in the metadata, and the
// network that carries them. What they are is in devices.go; the forwards,
// with their rules, are in forward.go.

var (
	virtioPortPattern = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	dhcpFirst         = 15 // libslirp hands out 10.0.2.15-10.0.2.30
	dhcpEnd           = 30
)

func (ck *checker) validateChannels() error {
	d := ck.d
	names, serialPorts := map[string]bool{}, map[uint]bool{}
	for _, ch := range d.Devices.Channels {
		if ch.Target == nil || ch.Target.GuestFWD == nil && ch.Target.VirtIO == nil {
			ck.refuseAtStart("channel target %s: minivirt has guestfwd and virtio channels; remove it to start the domain", strings.Join(unhandled(ch.Target), ""))
			continue
		}
		if ch.Source == nil || ch.Source.UNIX == nil {
			if ch.Target.GuestFWD != nil {
				ck.refuseAtStart("channel guestfwd source %s: a vmchannel's service is a Unix socket; use type='unix' to start the domain", strings.Join(unhandled(ch.Source), ""))
				continue
			}
			n := ch.Target.VirtIO.Name
			ck.unsupported("channel virtio "+n, unhandled(&ch, "Source", "Target", "Alias", "Address", "Log"))
			if err := ck.checkVirtioPortName(names, n); err != nil {
				return err
			}
			if err := ck.checkVirtioPortAddress(serialPorts, n, ch.Address); err != nil {
				return err
			}
			if err := ck.checkChardevSource("channel virtio "+n, ch.Source, ch.Log); err != nil {
				return err
			}
			continue
		}
		src := ch.Source.UNIX
		switch {
		case ch.Target.GuestFWD != nil:
			t := ch.Target.GuestFWD
			if err := ck.unsupported("channel guestfwd", unhandled(&ch, "Source", "Target", "Alias")); err != nil {
				return err
			}
			if src.Mode != "connect" {
				return fmt.Errorf("channel guestfwd source mode %q: must be connect", src.Mode)
			}
			if t.Port == "" || t.Address == "" {
				return fmt.Errorf("channel guestfwd: target needs address='' and port=''")
			}
			port, err := strconv.ParseUint(t.Port, 10, 32)
			if err != nil || port < 1 || port > 65535 {
				return fmt.Errorf("vmchannel port %s: must be 1-65535", t.Port)
			}
			if err := checkVMChannel(t.Address, uint(port), src.Path, "", 0, true); err != nil {
				return err
			}
		default:
			n := ch.Target.VirtIO.Name
			if err := ck.unsupported("channel virtio "+n, unhandled(&ch, "Source", "Target", "Alias", "Address")); err != nil {
				return err
			}
			if ch.Target.VirtIO.State != "" {
				ck.unsupported("channel virtio "+n+" target", []string{"attribute state"})
			}
			if err := ck.checkVirtioPortName(names, n); err != nil {
				return err
			}
			if err := ck.checkVirtioPortAddress(serialPorts, n, ch.Address); err != nil {
				return err
			}
			if src.Mode == "connect" && src.Path == "" {
				return fmt.Errorf("channel virtio %s source mode connect: needs path=''", n)
			}
			if src.Path != "" {
				if err := socketPath("channel virtio "+n+" source path", src.Path); err != nil {
					return err
				}
			}
		}
		if err := ck.unsupported("channel source", unhandled(src, "Mode", "Path")); err != nil {
			return err
		}
	}
	for _, e := range d.Ext.VMChannels {
		if e.Path == "" {
			continue // options of a guestfwd channel: checked below
		}
		if err := checkVMChannel(e.Address, e.Port, e.Path, e.Proxy, e.MaxConnections, true); err != nil {
			return err
		}
	}
	// One guest address:port serves one channel; bound sockets are not shared.
	ports := map[netip.AddrPort]bool{}
	for _, vc := range d.VMChannels() {
		ap := netip.AddrPortFrom(vc.Address, vc.Port)
		if ports[ap] {
			return fmt.Errorf("vmchannel port %d: used twice on address %s", vc.Port, vc.Address)
		}
		ports[ap] = true
	}
	for _, e := range d.Ext.VMChannels {
		if e.Path != "" {
			continue
		}
		a, _ := netip.ParseAddr(e.Address)
		if !ports[netip.AddrPortFrom(a, uint16(e.Port))] || e.Port > 65535 {
			return fmt.Errorf("metadata vmchannel %s:%d: options without a path must belong to a guestfwd <channel> on that address and port", e.Address, e.Port)
		}
		if err := checkVMChannel(e.Address, e.Port, "/options", e.Proxy, e.MaxConnections, false); err != nil {
			return err
		}
	}
	bound := map[string]bool{}
	for _, p := range d.VirtioPorts() {
		if p.Path == "" {
			continue
		}
		if bound[p.Path] {
			return fmt.Errorf("channel virtio source path %q: bound twice", p.Path)
		}
		bound[p.Path] = true
	}
	for _, vc := range d.VMChannels() {
		if bound[vc.Path] {
			return fmt.Errorf("vmchannel port %d path %q: is also a virtio channel's bound socket", vc.Port, vc.Path)
		}
	}
	return nil
}

func (ck *checker) validateNetwork() error {
	d := ck.d
	if err := ck.validateBackend(); err != nil {
		return err
	}
	if m := d.Ext.MTU; m != 0 {
		if m < 576 || m > 65520 {
			return fmt.Errorf("vmchannels mtu %d: must be 576-65520", m)
		}
		if d.Network() != NetworkNetstack {
			return fmt.Errorf("vmchannels mtu %d: only minivirt's own network (netstack) takes an MTU; QEMU's has 1500", m)
		}
	}
	switch n := d.Ext.Network; n {
	case "", NetworkSlirp:
	case NetworkNetstack:
		if _, ok := d.userInterface(); ok {
			return fmt.Errorf("vmchannels network 'netstack': has no NAT and cannot serve <interface type='user'>; remove that interface or use network='slirp'")
		}
	default:
		return fmt.Errorf("vmchannels network %q: must be netstack (minivirt's own network) or slirp (QEMU's)", n)
	}
	return nil
}

// Port returns n as a TCP port, or an error that names it as what (for
// example "vmchannel port" or "port add: --guest-port"): the one check of a
// port's range, for the model and the command line alike.
func Port(what string, n uint) (uint16, error) {
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("%s %d: must be 1-65535", what, n)
	}
	return uint16(n), nil
}

// checkVMChannel checks one vmchannel's fields; path is checked when checkPath.
func checkVMChannel(addr string, port uint, path, proxy string, maxConns uint, checkPath bool) error {
	if _, err := Port("vmchannel port", port); err != nil {
		return err
	}
	p := strconv.FormatUint(uint64(port), 10)
	if err := CheckAddress(addr, p); err != nil {
		return err
	}
	if checkPath {
		if err := socketPath("vmchannel port "+p+" path", path); err != nil {
			return err
		}
	}
	if proxy != ProxyNone && proxy != ProxyV2 {
		return fmt.Errorf("vmchannel port %s proxy %q: must be v2 or absent", p, proxy)
	}
	if maxConns > 65535 {
		return fmt.Errorf("vmchannel port %s maxconnections %d: must be 1-65535", p, maxConns)
	}
	return nil
}

// CheckAddress checks a vmchannel's guest-side address: IPv4, inside the user
// network, and none of the addresses the network itself uses.
func CheckAddress(addr, port string) error {
	a, err := netip.ParseAddr(addr)
	if err != nil || !a.Is4() {
		return fmt.Errorf("vmchannel port %s address %q: must be an IPv4 address such as 10.0.2.4", port, addr)
	}
	if !UserNet.Contains(a) {
		return fmt.Errorf("vmchannel port %s address %s: outside the user network %s", port, a, UserNet)
	}
	last := int(a.As4()[3])
	switch {
	case last == 0 || last == 255:
		return fmt.Errorf("vmchannel port %s address %s: is the network's own address; use e.g. 10.0.2.4", port, a)
	case last == 2:
		return fmt.Errorf("vmchannel port %s address %s: is the user network's gateway; use e.g. 10.0.2.4", port, a)
	case last == 3:
		return fmt.Errorf("vmchannel port %s address %s: is the user network's DNS server; use e.g. 10.0.2.4", port, a)
	case last >= dhcpFirst && last <= dhcpEnd:
		return fmt.Errorf("vmchannel port %s address %s: is in the guest's DHCP range 10.0.2.%d-%d; use e.g. 10.0.2.4", port, a, dhcpFirst, dhcpEnd)
	}
	return nil
}

// checkVirtioPortAddress accepts a virtio channel's address on the one
// virtio-serial bus minivirt gives the guest, at a port no other channel
// has; port 0 is a console's.
func (ck *checker) checkVirtioPortAddress(ports map[uint]bool, n string, a *libvirtxml.DomainAddress) error {
	if a == nil {
		return nil
	}
	where := "channel virtio " + n + " address"
	if a.VirtioSerial == nil {
		ck.refuseAtStart("%s type %s: a virtio channel sits on the virtio-serial bus; use type='virtio-serial' or remove the address to start the domain", where, addressType(a))
		return nil
	}
	v := a.VirtioSerial
	if zero(v.Controller) != 0 || zero(v.Bus) != 0 {
		ck.refuseAtStart("%s: minivirt gives the guest one virtio-serial bus (controller 0, bus 0); remove the address to start the domain", where)
	}
	if v.Port != nil {
		if *v.Port == 0 || *v.Port > 30 {
			return fmt.Errorf("%s port %d: must be 1-30 (port 0 is a console's)", where, *v.Port)
		}
		if ports[*v.Port] {
			return fmt.Errorf("%s port %d: used twice", where, *v.Port)
		}
		ports[*v.Port] = true
	}
	return nil
}

func (ck *checker) checkVirtioPortName(names map[string]bool, n string) error {
	if !virtioPortPattern().MatchString(n) {
		return fmt.Errorf("channel virtio target name %q: must be a port name such as org.qemu.guest_agent.0", n)
	}
	if names[n] {
		return fmt.Errorf("channel virtio target name %q: used twice", n)
	}
	names[n] = true
	return nil
}
