package domain

import (
	"fmt"
	"path/filepath"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// The rules of <filesystem>: a host directory shared with the guest, by 9p
// (QEMU's own -fsdev local) or virtiofs (QEMU's virtiofsd, which the
// supervisor starts and stops).

// Share is one host directory shared with the guest, normalised from a
// <filesystem type='mount'>.
type Share struct {
	// Driver is "path" (9p) or "virtiofs".
	Driver string
	// Source is the host directory, Tag what the guest mounts it by.
	Source, Tag string
	ReadOnly    bool
	// AccessMode is 9p's security model: passthrough, mapped or squash.
	AccessMode string
}

// maxMountTag is the longest mount tag each driver's device takes: 9p's
// is a string in its config space, virtiofs's a fixed 36 bytes.
var maxMountTag = map[string]int{"path": 255, "virtiofs": 36}

func (ck *checker) validateFilesystems() error {
	d := ck.d
	tags := map[string]bool{}
	for i, fs := range d.Devices.Filesystems {
		where := fmt.Sprintf("filesystem %d", i)
		ck.unsupported(where, unhandled(&fs, "AccessMode", "Driver", "Source", "Target", "ReadOnly", "Alias", "Address", "Binary"))
		if fs.Source == nil || fs.Source.Mount == nil {
			kind := "without a source"
			if fs.Source != nil {
				kind = strings.Join(unhandled(fs.Source), "")
			}
			ck.refuseAtStart("%s %s: minivirt shares host directories (type='mount') only; remove it to start the domain", where, kind)
			continue
		}
		if fs.Source.Mount.Socket != "" {
			ck.unsupported(where+" source", []string{"attribute socket (an external virtiofsd)"})
			continue
		}
		if err := absPath(where+" source dir", fs.Source.Mount.Dir); err != nil {
			return err
		}
		if fs.Target == nil || fs.Target.Dir == "" || strings.ContainsAny(fs.Target.Dir, "\x00\n\r") {
			tag := ""
			if fs.Target != nil {
				tag = fs.Target.Dir
			}
			return fmt.Errorf("%s target dir %q: the mount tag the guest mounts the share by; give one without control characters", where, tag)
		}
		if tags[fs.Target.Dir] {
			return fmt.Errorf("%s target dir %q: used twice", where, fs.Target.Dir)
		}
		tags[fs.Target.Dir] = true
		driver := "path"
		if dr := fs.Driver; dr != nil {
			ck.unsupported(where+" driver", unhandled(dr, "Type", "WRPolicy", "Queue"))
			if dr.Type != "" {
				driver = dr.Type
			}
			if dr.WRPolicy != "" && dr.WRPolicy != "immediate" {
				return fmt.Errorf("%s driver wrpolicy %q: must be immediate", where, dr.WRPolicy)
			}
		}
		if max, ok := maxMountTag[driver]; ok && len(fs.Target.Dir) > max {
			return fmt.Errorf("%s target dir %q: %d bytes; a %s share's tag has at most %d", where, fs.Target.Dir, len(fs.Target.Dir), driver, max)
		}
		switch driver {
		case "path":
			if fs.Driver != nil && fs.Driver.Queue != 0 {
				return fmt.Errorf("%s driver queue %d: only for a virtiofs share", where, fs.Driver.Queue)
			}
			if err := oneOf(where+" accessmode", fs.AccessMode, []string{"passthrough", "mapped", "squash"}); err != nil {
				return err
			}
			if fs.Binary != nil {
				return fmt.Errorf("%s binary: only for driver type='virtiofs'", where)
			}
		case "virtiofs":
			if fs.Driver.WRPolicy != "" {
				return fmt.Errorf("%s driver wrpolicy: only for a 9p share", where)
			}
			if q := fs.Driver.Queue; q != 0 && (q > 1024 || q&(q-1) != 0) {
				return fmt.Errorf("%s driver queue %d: must be a power of two, at most 1024", where, q)
			}
			if fs.AccessMode != "" && fs.AccessMode != "passthrough" {
				return fmt.Errorf("%s accessmode %q: virtiofs has passthrough only", where, fs.AccessMode)
			}
			if strings.Contains(fs.Source.Mount.Dir, ",") {
				ck.refuseAtStart("%s source dir %q: QEMU's virtiofsd splits its options at commas and cannot take this path; share a directory without one to start the domain", where, fs.Source.Mount.Dir)
			}
			if b := d.MemoryBacking; b != nil && b.MemoryAccess != nil && b.MemoryAccess.Mode == "private" {
				ck.refuseAtStart("%s driver virtiofs: virtiofsd reads the guest's memory, which <memoryBacking><access mode='private'/> keeps to QEMU; remove it to start the domain", where)
			}
			for i, cell := range d.NUMACells() {
				if cell.MemAccess == "private" {
					ck.refuseAtStart("%s driver virtiofs: virtiofsd reads the guest's memory, which cpu numa cell %d keeps to QEMU (memAccess='private'); remove it to start the domain", where, i)
				}
			}
			if fs.ReadOnly != nil {
				ck.refuseAtStart("%s readonly: QEMU 7.2's virtiofsd cannot share a directory read-only; use driver type='path' (9p) or remove <readonly/> to start the domain", where)
			}
			if b := fs.Binary; b != nil {
				ck.unsupported(where+" binary", unhandled(b, "Path", "XAttr", "Cache", "Sandbox"))
				if b.Path != "" {
					if err := absPath(where+" binary path", b.Path); err != nil {
						return err
					}
				}
				if b.Cache != nil {
					if err := oneOf(where+" binary cache mode", b.Cache.Mode, []string{"none", "always", "auto"}); err != nil {
						return err
					}
				}
				if err := oneOf(where+" binary xattr", b.XAttr, onOff); err != nil {
					return err
				}
				if b.Sandbox != nil {
					if err := oneOf(where+" binary sandbox mode", b.Sandbox.Mode, []string{"namespace", "chroot"}); err != nil {
						return err
					}
				}
			}
		case "handle", "loop", "nbd", "ploop", "mtp":
			ck.refuseAtStart("%s driver type %q: QEMU shares directories by 9p (type='path') or virtiofs; use one of them", where, driver)
		default:
			return fmt.Errorf("%s driver type %q: must be path or virtiofs", where, driver)
		}
	}
	return nil
}

// AddShare adds a <filesystem> that shares s with the guest.
func (d *Domain) AddShare(s Share) {
	fs := libvirtxml.DomainFilesystem{AccessMode: s.AccessMode,
		Source: &libvirtxml.DomainFilesystemSource{Mount: &libvirtxml.DomainFilesystemSourceMount{Dir: s.Source}},
		Target: &libvirtxml.DomainFilesystemTarget{Dir: s.Tag}}
	if s.Driver != "" && s.Driver != "path" {
		fs.Driver = &libvirtxml.DomainFilesystemDriver{Type: s.Driver}
	}
	if s.ReadOnly {
		fs.ReadOnly = &libvirtxml.DomainFilesystemReadOnly{}
	}
	devices := *d.Devices
	devices.Filesystems = append(append([]libvirtxml.DomainFilesystem(nil), d.Devices.Filesystems...), fs)
	d.Devices = &devices
}

// Shares returns the host directories shared with the guest.
func (d *Domain) Shares() []Share {
	var out []Share
	for _, fs := range d.Devices.Filesystems {
		if s, ok := ShareOf(fs); ok {
			out = append(out, s)
		}
	}
	return out
}

// ShareOf returns the host directory a <filesystem> shares, or false when
// it shares none (start refuses such a filesystem).
func ShareOf(fs libvirtxml.DomainFilesystem) (Share, bool) {
	if fs.Source == nil || fs.Source.Mount == nil || fs.Target == nil {
		return Share{}, false
	}
	s := Share{Driver: "path", Source: filepath.Clean(fs.Source.Mount.Dir), Tag: fs.Target.Dir, ReadOnly: fs.ReadOnly != nil, AccessMode: fs.AccessMode}
	if fs.Driver != nil && fs.Driver.Type != "" {
		s.Driver = fs.Driver.Type
	}
	if s.AccessMode == "" {
		s.AccessMode = "passthrough"
	}
	return s, true
}
