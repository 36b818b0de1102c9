package domain

import (
	"fmt"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// The rules of the guest's character devices: <serial> and <console>. A
// <channel> is a vmchannel's or a virtio port's: its rules are in vmchannel.go.

// validateChardevs checks <serial> and <console>: pty (minivirt's console
// socket), file, unix and null sources, with <log file>.
func (ck *checker) validateChardevs() error {
	d := ck.d
	type chardev struct {
		where  string
		source *libvirtxml.DomainChardevSource
		log    *libvirtxml.DomainChardevLog
		rest   []string
	}
	var all []chardev
	for i, s := range d.Devices.Serials {
		where := fmt.Sprintf("serial %d", i)
		rest := unhandled(&s, "Source", "Target", "Log", "Alias", "Protocol")
		if t := s.Target; t != nil {
			rest = append(rest, unhandled(t, "Type", "Port", "Model")...)
			if !contains([]string{"", "isa-serial", "pci-serial", "isa-debug"}, t.Type) {
				ck.refuseAtStart("%s target type %q: minivirt gives the guest isa-serial, pci-serial or isa-debug; change it to start the domain", where, t.Type)
			}
			if t.Model != nil && !contains([]string{"isa-serial", "pci-serial", "isa-debugcon"}, t.Model.Name) {
				ck.refuseAtStart("%s target model %q: minivirt gives the guest isa-serial, pci-serial or isa-debugcon; change it to start the domain", where, t.Model.Name)
			}
			if t.Port != nil && *t.Port != uint(i) {
				return fmt.Errorf("%s target port %d: serial ports are numbered in order from 0", where, *t.Port)
			}
		}
		if p := s.Protocol; p != nil {
			switch {
			case s.Source == nil || s.Source.TCP == nil:
				return fmt.Errorf("%s protocol type %q: only for a source of type tcp", where, p.Type)
			case p.Type == "tls" || p.Type == "telnets":
				ck.refuseAtStart("%s protocol type %s: minivirt sets up no TLS for a serial port; use raw or telnet to start the domain", where, p.Type)
			case p.Type != "raw" && p.Type != "telnet":
				return fmt.Errorf("%s protocol type %q: must be raw, telnet, telnets or tls", where, p.Type)
			}
		}
		all = append(all, chardev{where, s.Source, s.Log, rest})
	}
	if len(d.Devices.Serials) > 4 {
		return fmt.Errorf("serial: %d ports; QEMU gives an x86 guest at most 4", len(d.Devices.Serials))
	}
	virtio := 0
	for i, c := range d.Devices.Consoles {
		where := fmt.Sprintf("console %d", i)
		rest := unhandled(&c, "Source", "Target", "Log", "Alias", "TTY")
		if t := c.Target; t != nil {
			rest = append(rest, unhandled(t, "Type", "Port")...)
			if err := oneOf(where+" target type", t.Type, []string{"serial", "virtio"}); err != nil {
				return err
			}
			if t.Type == "virtio" {
				virtio++
			}
		}
		if (c.Target == nil || c.Target.Type != "virtio") && i > 0 {
			return fmt.Errorf("%s: a serial console beyond the first; add a <serial> instead", where)
		}
		all = append(all, chardev{where, c.Source, c.Log, rest})
	}
	for _, c := range all {
		ck.unsupported(c.where, c.rest)
		if err := ck.checkChardevSource(c.where, c.source, c.log); err != nil {
			return err
		}
	}
	return nil
}

// checkChardevSource checks a character device's <source> and <log>: pty,
// null, file, unix (bind or connect), tcp (server or client), udp and dev
// (a host tty) are acted on; other types are kept and refused at start.
func (ck *checker) checkChardevSource(where string, src *libvirtxml.DomainChardevSource, log *libvirtxml.DomainChardevLog) error {
	switch {
	case src == nil || src.Pty != nil || src.Null != nil:
	case src.File != nil:
		ck.unsupported(where+" source", unhandled(src.File, "Path", "Append"))
		if err := absPath(where+" source path", src.File.Path); err != nil {
			return err
		}
	case src.UNIX != nil:
		ck.unsupported(where+" source", unhandled(src.UNIX, "Mode", "Path", "Reconnect"))
		if err := oneOf(where+" source mode", src.UNIX.Mode, []string{"bind", "connect"}); err != nil {
			return err
		}
		if err := socketPath(where+" source path", src.UNIX.Path); err != nil {
			return err
		}
	case src.TCP != nil:
		t := src.TCP
		ck.unsupported(where+" source", unhandled(t, "Mode", "Host", "Service", "Reconnect"))
		if err := oneOf(where+" source mode", t.Mode, []string{"bind", "connect"}); err != nil {
			return err
		}
		if _, err := strconv.ParseUint(t.Service, 10, 16); err != nil && t.Service != "" {
			ck.refuseAtStart("%s source service %q: minivirt takes a port number, not a service name; give the number to start the domain", where, t.Service)
		} else if err := checkHostPort(where+" source", t.Host, t.Service); err != nil {
			return err
		}
	case src.UDP != nil:
		u := src.UDP
		if err := checkHostPort(where+" source connect", u.ConnectHost, u.ConnectService); err != nil {
			return err
		}
		if u.BindService != "" || u.BindHost != "" {
			if err := checkHostPort(where+" source bind", u.BindHost, u.BindService); err != nil {
				return err
			}
		}
	case src.Dev != nil:
		ck.unsupported(where+" source", unhandled(src.Dev, "Path"))
		if err := absPath(where+" source path", src.Dev.Path); err != nil {
			return err
		}
	default:
		ck.refuseAtStart("%s %s: minivirt connects pty, file, unix, tcp, udp, dev and null; change it to start the domain", where, strings.Join(unhandled(src), ""))
	}
	if log != nil {
		if err := absPath(where+" log file", log.File); err != nil {
			return err
		}
		if err := oneOf(where+" log append", log.Append, onOff); err != nil {
			return err
		}
	}
	return nil
}

// checkHostPort checks a host name or address and a port number.
func checkHostPort(where, host, port string) error {
	if host != "" && !hostPattern().MatchString(host) {
		return fmt.Errorf("%s host %q: must be a host name or an IP address", where, host)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("%s service %q: must be a port number, 1-65535", where, port)
	}
	return nil
}

var hostPattern = lazyRegexp(`^[A-Za-z0-9._:-]{1,253}$`)
