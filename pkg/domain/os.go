package domain

import (
	"fmt"

	"libvirt.org/go/libvirtxml"
)

// The rules of the guest's platform: <os> (type and machine, boot devices and
// menu, kernel, firmware, loader and NVRAM), <features>, <cpu>, <clock> and
// <pm>.

var (
	machinePattern  = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	cpuModelPattern = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	yesNo           = []string{"yes", "no"}
)

func (ck *checker) validateOS() error {
	d := ck.d
	os := d.OS
	if err := ck.unsupported("os", unhandled(os, "Type", "Firmware", "FirmwareInfo", "Loader", "NVRam", "Kernel",
		"Initrd", "Cmdline", "BootDevices", "BootMenu", "SMBios")); err != nil {
		return err
	}
	if os.Type.Type != "hvm" {
		return fmt.Errorf("os type %q: must be hvm", os.Type.Type)
	}
	if os.Type.Arch != "x86_64" {
		return fmt.Errorf("os type arch %q: minivirt runs x86_64 guests only", os.Type.Arch)
	}
	if m := os.Type.Machine; m != "" && !machinePattern().MatchString(m) {
		return fmt.Errorf("os type machine %q: must be a QEMU machine name such as q35 or pc", m)
	}
	for _, f := range [...]struct{ elem, path string }{{"os kernel", os.Kernel}, {"os initrd", os.Initrd}} {
		if f.path != "" {
			if err := absPath(f.elem, f.path); err != nil {
				return err
			}
		}
	}
	if os.Initrd != "" && os.Kernel == "" {
		return fmt.Errorf("os initrd %q: needs a <kernel>", os.Initrd)
	}
	if os.Cmdline != "" && os.Kernel == "" {
		return fmt.Errorf("os cmdline %q: needs a <kernel>", os.Cmdline)
	}
	for _, b := range os.BootDevices {
		if err := oneOf("os boot dev", b.Dev, []string{"hd", "cdrom", "network", "fd"}); err != nil {
			return err
		}
	}
	if len(os.BootDevices) > 0 && d.bootOrders() {
		return fmt.Errorf("os boot dev: cannot be combined with <boot order> on devices (libvirt refuses it too); use one of them")
	}
	if m := os.BootMenu; m != nil {
		if err := ck.unsupported("os bootmenu", unhandled(m, "Enable")); err != nil {
			return err
		}
		if err := oneOf("os bootmenu enable", m.Enable, yesNo); err != nil {
			return err
		}
	}
	if err := oneOf("os firmware", os.Firmware, []string{"efi", "bios"}); err != nil {
		return err
	}
	if fi := os.FirmwareInfo; fi != nil {
		for _, f := range fi.Features {
			if f.Name == "secure-boot" && f.Enabled == "yes" || f.Name == "enrolled-keys" && f.Enabled == "yes" {
				return fmt.Errorf("os firmware feature %s: minivirt does not set up Secure Boot; set enabled='no' or remove it", f.Name)
			}
		}
	}
	if l := os.Loader; l != nil {
		if err := ck.unsupported("os loader", unhandled(l, "Path", "Readonly", "Type", "Secure", "Format")); err != nil {
			return err
		}
		if l.Secure == "yes" {
			return fmt.Errorf("os loader secure='yes': minivirt does not set up Secure Boot; remove it")
		}
		if err := oneOf("os loader type", l.Type, []string{"pflash", "rom"}); err != nil {
			return err
		}
		if err := oneOf("os loader format", l.Format, []string{"raw"}); err != nil {
			return err
		}
		if l.Path != "" {
			if err := absPath("os loader", l.Path); err != nil {
				return err
			}
		}
	}
	if n := os.NVRam; n != nil {
		if err := ck.unsupported("os nvram", unhandled(n, "NVRam", "Template", "Format")); err != nil {
			return err
		}
		if err := oneOf("os nvram format", n.Format, []string{"raw"}); err != nil {
			return err
		}
		for _, p := range [...]struct{ elem, path string }{{"os nvram", n.NVRam}, {"os nvram template", n.Template}} {
			if p.path != "" {
				if err := absPath(p.elem, p.path); err != nil {
					return err
				}
			}
		}
	}
	if os.Firmware == "efi" || os.Loader != nil || os.NVRam != nil {
		if os.Loader != nil && os.Loader.Type == "rom" && os.NVRam != nil {
			return fmt.Errorf("os nvram: a loader of type rom takes no NVRAM; use type='pflash'")
		}
	}
	return nil
}

// validateBoot: a domain with nothing to boot is valid (libvirt defines
// it), but start refuses it.
func (ck *checker) validateBoot() error {
	d := ck.d
	os := d.OS
	_, netboot := d.UserNIC()
	netboot = netboot && (len(os.BootDevices) > 0 && os.BootDevices[0].Dev == "network" || d.bootOrders())
	if os.Kernel == "" && len(d.Devices.Disks) == 0 && os.Firmware != "efi" && os.Loader == nil && !netboot {
		ck.refuseAtStart("os: nothing to boot; give <kernel> or a <disk>")
	}
	return nil
}

// bootOrders reports whether any device has a <boot order>.
func (d *Domain) bootOrders() bool {
	for _, disk := range d.Devices.Disks {
		if disk.Boot != nil {
			return true
		}
	}
	for _, nic := range d.Devices.Interfaces {
		if nic.Boot != nil {
			return true
		}
	}
	return false
}

func (ck *checker) validateFeatures() error {
	d := ck.d
	f := d.Features
	if f == nil {
		return nil
	}
	if err := ck.unsupported("features", unhandled(f, "ACPI", "APIC", "PAE", "VMPort", "SMM")); err != nil {
		return err
	}
	if f.ACPI == nil {
		ck.refuseAtStart("features: no <acpi/>; minivirt always gives the guest ACPI (its power button is how shutdown works): add <acpi/> to start the domain")
	}
	if f.APIC != nil && f.APIC.EOI != "" {
		ck.unsupported("features apic", []string{"attribute eoi"})
	}
	if f.VMPort != nil {
		if err := oneOf("features vmport state", f.VMPort.State, onOff); err != nil {
			return err
		}
	}
	if f.SMM != nil {
		if err := ck.unsupported("features smm", unhandled(f.SMM, "State")); err != nil {
			return err
		}
		if err := oneOf("features smm state", f.SMM.State, onOff); err != nil {
			return err
		}
	}
	return nil
}

func (ck *checker) validateCPU() error {
	d := ck.d
	c := d.CPU
	if c == nil {
		return nil
	}
	if err := ck.unsupported("cpu", unhandled(c, "Match", "Mode", "Check", "Migratable", "Model", "Topology", "Features", "Numa")); err != nil {
		return err
	}
	if err := oneOf("cpu mode", c.Mode, []string{"host-passthrough", "host-model", "maximum", "custom"}); err != nil {
		return err
	}
	if c.Mode == "custom" || c.Mode == "" && c.Model != nil {
		if c.Model == nil || !cpuModelPattern().MatchString(c.Model.Value) {
			return fmt.Errorf("cpu mode custom: needs a <model> naming a QEMU CPU model such as qemu64 or Skylake-Client")
		}
	}
	if c.Model != nil {
		if err := ck.unsupported("cpu model", unhandled(c.Model, "Value", "Fallback")); err != nil {
			return err
		}
	}
	for _, f := range c.Features {
		if err := oneOf("cpu feature "+f.Name+" policy", f.Policy, []string{"require", "force", "disable", "forbid", "optional"}); err != nil {
			return err
		}
		if !cpuModelPattern().MatchString(f.Name) {
			return fmt.Errorf("cpu feature %q: not a CPU feature name", f.Name)
		}
	}
	if t := c.Topology; t != nil {
		if err := ck.unsupported("cpu topology", unhandled(t, "Sockets", "Dies", "Cores", "Threads")); err != nil {
			return err
		}
		n := max(t.Sockets, 1) * max(t.Dies, 1) * max(t.Cores, 1) * max(t.Threads, 1)
		if n != int(d.VCPU.Value) {
			return fmt.Errorf("cpu topology: %d sockets x %d dies x %d cores x %d threads is %d CPUs, but vcpu is %d; make them agree",
				max(t.Sockets, 1), max(t.Dies, 1), max(t.Cores, 1), max(t.Threads, 1), n, d.VCPU.Value)
		}
	}
	return nil
}

func (ck *checker) validateClock() error {
	d := ck.d
	c := d.Clock
	if c == nil {
		return nil
	}
	if err := ck.unsupported("clock", unhandled(c, "Offset", "Timer", "Start", "Adjustment", "TimeZone", "Basis")); err != nil {
		return err
	}
	switch c.Offset {
	case "", "utc", "localtime":
		if c.Start != 0 || c.Adjustment != "" || c.TimeZone != "" || c.Basis != "" {
			return fmt.Errorf("clock offset %q: takes no start, adjustment, basis or timezone", c.Offset)
		}
	case "absolute":
	case "variable", "timezone":
		ck.refuseAtStart("clock offset %s: minivirt starts the guest's clock at utc, localtime or an absolute time; change it to start the domain", c.Offset)
	default:
		return fmt.Errorf("clock offset %q: must be utc, localtime, absolute, variable or timezone", c.Offset)
	}
	for _, t := range c.Timer {
		where := "clock timer " + t.Name
		if err := ck.unsupported(where, unhandled(&t, "Name", "TickPolicy", "Present")); err != nil {
			return err
		}
		if err := oneOf(where+" present", t.Present, yesNo); err != nil {
			return err
		}
		switch t.Name {
		case "rtc":
			if err := oneOf(where+" tickpolicy", t.TickPolicy, []string{"catchup", "delay"}); err != nil {
				return err
			}
			if t.Present == "no" {
				return fmt.Errorf("%s present='no': an x86 guest always has an RTC; remove it", where)
			}
		case "pit":
			if err := oneOf(where+" tickpolicy", t.TickPolicy, []string{"delay", "catchup", "discard"}); err != nil {
				return err
			}
		case "hpet", "kvmclock":
			if t.TickPolicy != "" {
				ck.unsupported(where, []string{"attribute tickpolicy"})
			}
		default:
			ck.refuseAtStart("%s: minivirt sets rtc, pit, hpet and kvmclock; remove it to start the domain", where)
		}
	}
	if pm := d.PM; pm != nil {
		for _, p := range [...]struct {
			elem string
			pol  *libvirtxml.DomainPMPolicy
		}{{"pm suspend-to-mem", pm.SuspendToMem}, {"pm suspend-to-disk", pm.SuspendToDisk}} {
			if p.pol != nil {
				if err := oneOf(p.elem+" enabled", p.pol.Enabled, yesNo); err != nil {
					return err
				}
			}
		}
	}
	return nil
}
