package domain

import (
	"fmt"
	"sort"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// The rules of what the guest's firmware tables tell it and of the
// domain's helper threads: <sysinfo> (SMBIOS and fw_cfg strings), <genid>,
// <iothreads>; and the tuning elements minivirt keeps and says it does not
// apply.

// smbiosFields are the SMBIOS fields QEMU's -smbios takes, by table and by
// libvirt's entry name.
var smbiosFields = map[string]map[string]string{
	"bios":      {"vendor": "vendor", "version": "version", "date": "date", "release": "release"},
	"system":    {"manufacturer": "manufacturer", "product": "product", "version": "version", "serial": "serial", "uuid": "uuid", "sku": "sku", "family": "family"},
	"baseBoard": {"manufacturer": "manufacturer", "product": "product", "version": "version", "serial": "serial", "asset": "asset", "location": "location"},
	"chassis":   {"manufacturer": "manufacturer", "version": "version", "serial": "serial", "asset": "asset", "sku": "sku"},
}

func (ck *checker) validatePlatform() error {
	d := ck.d
	smbios := 0
	for i, si := range d.SysInfo {
		where := fmt.Sprintf("sysinfo %d", i)
		switch {
		case si.SMBIOS != nil:
			smbios++
			s := si.SMBIOS
			ck.unsupported(where+" type smbios", unhandled(s, "BIOS", "System", "BaseBoard", "Chassis", "OEMStrings"))
			if len(s.BaseBoard) > 1 {
				ck.refuseAtStart("%s baseBoard: given %d times; minivirt gives the guest one: keep one to start the domain", where, len(s.BaseBoard))
			}
			for table, entries := range d.smbiosEntries(s) {
				for _, e := range entries {
					if _, ok := smbiosFields[table][e.Name]; !ok {
						return fmt.Errorf("%s %s entry name %q: must be one of %s", where, table, e.Name, strings.Join(keys(smbiosFields[table]), ", "))
					}
					if e.File != "" {
						ck.unsupported(where+" "+table+" entry "+e.Name, []string{"attribute file"})
					}
					if strings.ContainsRune(e.Value, 0) {
						return fmt.Errorf("%s %s entry %s: contains a NUL byte", where, table, e.Name)
					}
					if table == "system" && e.Name == "uuid" {
						if u, err := canonicalUUID(e.Value); err != nil || u != d.UUID {
							return fmt.Errorf("%s system entry uuid %q: must be the domain's uuid %s", where, e.Value, d.UUID)
						}
					}
				}
			}
		case si.FWCfg != nil:
			for _, e := range si.FWCfg.Entry {
				if (e.Value == "") == (e.File == "") {
					return fmt.Errorf("%s fwcfg entry %q: give a value or file='', one of them", where, e.Name)
				}
				if !strings.HasPrefix(e.Name, "opt/") || strings.ContainsAny(e.Name, ",\x00") || len(e.Name) > 55 {
					return fmt.Errorf("%s fwcfg entry name %q: must start with opt/, at most 55 characters, no commas", where, e.Name)
				}
				if e.File != "" {
					if err := absPath(where+" fwcfg entry "+e.Name+" file", e.File); err != nil {
						return err
					}
				}
			}
		}
	}
	if smbios > 1 {
		return fmt.Errorf("sysinfo type smbios: given %d times; give one", smbios)
	}
	if s := d.OS.SMBios; s != nil {
		switch s.Mode {
		case "emulate":
		case "sysinfo":
			if smbios == 0 {
				return fmt.Errorf("os smbios mode sysinfo: the domain has no <sysinfo type='smbios'>")
			}
		case "host":
			ck.refuseAtStart("os smbios mode host: minivirt does not copy the host's SMBIOS tables; use sysinfo or emulate to start the domain")
		default:
			return fmt.Errorf("os smbios mode %q: must be emulate, host or sysinfo", s.Mode)
		}
	}
	if g := d.GenID; g != nil && g.Value != "" {
		if _, err := canonicalUUID(g.Value); err != nil {
			return fmt.Errorf("genid %q: must be a uuid, or empty for one minivirt makes at each start", g.Value)
		}
	}
	if t := d.IOThreadIDs; t != nil {
		seen := map[uint]bool{}
		for _, th := range t.IOThreads {
			if th.ID == 0 || seen[th.ID] {
				return fmt.Errorf("iothreadids iothread id %d: ids are unique and start at 1", th.ID)
			}
			seen[th.ID] = true
			ck.unsupported(fmt.Sprintf("iothreadids iothread %d", th.ID), unhandled(&th, "ID"))
		}
		if d.IOThreads != 0 && uint(len(t.IOThreads)) > d.IOThreads {
			return fmt.Errorf("iothreads %d: but <iothreadids> names %d; make them agree", d.IOThreads, len(t.IOThreads))
		}
	}
	if d.IOThreads > 64 {
		return fmt.Errorf("iothreads %d: at most 64", d.IOThreads)
	}
	return nil
}

// sysinfoUUID is the uuid <sysinfo type='smbios'> gives the system, or "".
func (d *Domain) sysinfoUUID() string {
	for _, si := range d.SysInfo {
		if si.SMBIOS != nil && si.SMBIOS.System != nil {
			for _, e := range si.SMBIOS.System.Entry {
				if e.Name == "uuid" {
					return e.Value
				}
			}
		}
	}
	return ""
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// SMBIOS is what the guest's SMBIOS tables say, by QEMU's -smbios types:
// 0 (BIOS), 1 (system), 2 (base board), 3 (chassis), each field in order,
// and the OEM strings (type 11). It is empty unless <os><smbios
// mode='sysinfo'/>, as in libvirt.
type SMBIOS struct {
	Tables     map[int][][2]string
	OEMStrings []string
}

// SMBIOSTables returns the guest's SMBIOS strings from <sysinfo>.
func (d *Domain) SMBIOSTables() SMBIOS {
	var out SMBIOS
	if d.OS.SMBios == nil || d.OS.SMBios.Mode != "sysinfo" {
		return out
	}
	out.Tables = map[int][][2]string{}
	for _, si := range d.SysInfo {
		if si.SMBIOS == nil {
			continue
		}
		entries := d.smbiosEntries(si.SMBIOS)
		for table, typ := range map[string]int{"bios": 0, "system": 1, "baseBoard": 2, "chassis": 3} {
			for _, e := range entries[table] {
				out.Tables[typ] = append(out.Tables[typ], [2]string{smbiosFields[table][e.Name], e.Value})
			}
		}
		if si.SMBIOS.OEMStrings != nil {
			out.OEMStrings = si.SMBIOS.OEMStrings.Entry
		}
	}
	return out
}

// FWCfgEntry is one fw_cfg item given to the guest: a value or a file.
type FWCfgEntry struct{ Name, Value, File string }

// FWCfg returns the <sysinfo type='fwcfg'> entries.
func (d *Domain) FWCfg() []FWCfgEntry {
	var out []FWCfgEntry
	for _, si := range d.SysInfo {
		if si.FWCfg != nil {
			for _, e := range si.FWCfg.Entry {
				out = append(out, FWCfgEntry{e.Name, e.Value, e.File})
			}
		}
	}
	return out
}

func (d *Domain) smbiosEntries(s *libvirtxml.DomainSysInfoSMBIOS) map[string][]libvirtxml.DomainSysInfoEntry {
	m := map[string][]libvirtxml.DomainSysInfoEntry{}
	if s.BIOS != nil {
		m["bios"] = s.BIOS.Entry
	}
	if s.System != nil {
		m["system"] = s.System.Entry
	}
	if len(s.BaseBoard) > 0 {
		m["baseBoard"] = s.BaseBoard[0].Entry
	}
	if s.Chassis != nil {
		m["chassis"] = s.Chassis.Entry
	}
	return m
}

// KeptElements names the tuning elements the domain has that minivirt
// keeps and writes back but does not apply: pinning and host resource
// limits change nothing the guest can see.
func (d *Domain) KeptElements() []string {
	var out []string
	for _, k := range [...]struct {
		name string
		set  bool
	}{
		{"<cputune>", d.CPUTune != nil}, {"<numatune>", d.NUMATune != nil}, {"<memtune>", d.MemoryTune != nil},
		{"<blkiotune>", d.BlockIOTune != nil}, {"<resource>", d.Resource != nil}, {"<vcpu cpuset>", d.VCPU != nil && d.VCPU.CPUSet != ""},
	} {
		if k.set {
			out = append(out, k.name)
		}
	}
	return out
}
