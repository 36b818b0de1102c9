package domain

import (
	"fmt"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// The rules of the guest's character devices: <serial> and <console>. A
// <channel> is a vmchannel's or a virtio port's: its rules are in vmchannel.go.

// validateChardevs checks <serial> and <console>: pty (minivirt's console
// socket), file, unix and null sources, with <log file>.
func (d *Domain) validateChardevs() error {
	type chardev struct {
		where  string
		source *libvirtxml.DomainChardevSource
		log    *libvirtxml.DomainChardevLog
		rest   []string
	}
	var all []chardev
	for i, s := range d.Devices.Serials {
		where := fmt.Sprintf("serial %d", i)
		rest := unhandled(&s, "Source", "Target", "Log", "Alias")
		if t := s.Target; t != nil {
			rest = append(rest, unhandled(t, "Type", "Port", "Model")...)
			if err := oneOf(where+" target type", t.Type, []string{"isa-serial"}); err != nil {
				return err
			}
			if t.Model != nil && t.Model.Name != "isa-serial" {
				return fmt.Errorf("%s target model %q: must be isa-serial", where, t.Model.Name)
			}
			if t.Port != nil && *t.Port != uint(i) {
				return fmt.Errorf("%s target port %d: serial ports are numbered in order from 0", where, *t.Port)
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
		if err := notSupported(c.where, c.rest); err != nil {
			return err
		}
		src := c.source
		switch {
		case src == nil || src.Pty != nil || src.Null != nil:
		case src.File != nil:
			if err := notSupported(c.where+" source", unhandled(src.File, "Path", "Append")); err != nil {
				return err
			}
			if err := absPath(c.where+" source path", src.File.Path); err != nil {
				return err
			}
		case src.UNIX != nil:
			if err := notSupported(c.where+" source", unhandled(src.UNIX, "Mode", "Path")); err != nil {
				return err
			}
			if err := oneOf(c.where+" source mode", src.UNIX.Mode, []string{"bind", "connect"}); err != nil {
				return err
			}
			if err := socketPath(c.where+" source path", src.UNIX.Path); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s %s: not supported by minivirt; use pty, file, unix or null", c.where, strings.Join(unhandled(src), ""))
		}
		if c.log != nil {
			if err := absPath(c.where+" log file", c.log.File); err != nil {
				return err
			}
			if err := oneOf(c.where+" log append", c.log.Append, onOff); err != nil {
				return err
			}
		}
	}
	return nil
}
