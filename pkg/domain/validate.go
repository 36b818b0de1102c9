package domain

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"libvirt.org/go/libvirtxml"
)

// MaxSocketPath is the longest Unix socket path Linux accepts (sun_path less
// its terminating NUL).
const MaxSocketPath = 107

var (
	namePattern       = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	machinePattern    = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	diskTargetPattern = lazyRegexp(`^(vd|sd|hd)[a-z]{1,3}$`)
	virtioPortPattern = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	cpuModelPattern   = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	lifecycleActions  = []string{"destroy", "restart", "preserve"}
	nicModels         = []string{"virtio", "e1000", "e1000e", "rtl8139"}
	diskBuses         = []string{"virtio", "sata", "ide"}
	diskFormats       = []string{"raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc"}
	diskCaches        = []string{"default", "none", "writethrough", "writeback", "directsync", "unsafe"}
	diskIO            = []string{"native", "threads", "io_uring"}
	diskErrorPolicies = []string{"stop", "report", "ignore", "enospace"}
	onOff             = []string{"on", "off"}
	yesNo             = []string{"yes", "no"}
	videoModels       = []string{"vga", "cirrus", "virtio", "qxl", "bochs", "ramfb", "none"}
	dhcpFirst         = 15 // libslirp hands out 10.0.2.15-10.0.2.30
	dhcpEnd           = 30
)

// lazyRegexp compiles expr on first use. The minivirt binary is also the
// vmchannel helper, started once per guest connection: compiling every
// pattern at start-up would cost each connection half a millisecond.
func lazyRegexp(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// ValidName reports whether name may name a domain.
func ValidName(name string) error {
	if !namePattern().MatchString(name) {
		return fmt.Errorf("name %q: must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit", name)
	}
	return nil
}

// Validate checks every rule of the model and refuses, naming it, every
// element minivirt would otherwise drop or misread. When several rules fail,
// the first is reported.
func (d *Domain) Validate() error {
	for _, check := range []func() error{
		d.validateKept, d.validateTop, d.validateOS, d.validateFeatures, d.validateCPU, d.validateClock,
		d.validateDevices, d.validateDisks, d.validateInterfaces, d.validateChardevs, d.validateChannels,
		d.validateControllers, d.validateOtherDevices, d.validateNetwork, d.validateForwards, d.validateCommandline,
	} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// notSupported words the refusal of what minivirt does not act on.
func notSupported(where string, what []string) error {
	if len(what) == 0 {
		return nil
	}
	return fmt.Errorf("%s: %s not supported by minivirt (it would be ignored); remove it", where, strings.Join(what, ", "))
}

func oneOf(elem, value string, allowed []string) error {
	if value == "" || contains(allowed, value) {
		return nil
	}
	return fmt.Errorf("%s %q: must be %s", elem, value, strings.Join(allowed, ", "))
}

// validateKept refuses what the model could not keep: elements and
// attributes libvirtxml does not know, or that appear more often than the
// model holds them.
func (d *Domain) validateKept() error {
	if len(d.dropped) == 0 {
		return nil
	}
	if len(d.dropped) > 1 {
		return fmt.Errorf("%s (and %d more)", d.dropped[0], len(d.dropped)-1)
	}
	return errors.New(d.dropped[0])
}

func (d *Domain) validateTop() error {
	if d.Type != "kvm" && d.Type != "qemu" {
		return fmt.Errorf("domain type %q: must be 'kvm' (KVM when usable, else TCG) or 'qemu' (TCG)", d.Type)
	}
	if err := ValidName(d.Name); err != nil {
		return err
	}
	if _, err := canonicalUUID(d.UUID); err != nil {
		return err
	}
	if err := notSupported("domain", unhandled(&d.Domain, "Type", "Name", "UUID", "Title", "Description", "Metadata",
		"Memory", "CurrentMemory", "VCPU", "OS", "Features", "CPU", "Clock", "OnPoweroff", "OnReboot", "OnCrash",
		"PM", "Devices", "SecLabel", "QEMUCommandline", "ID")); err != nil {
		return err
	}
	if d.Memory.Value == 0 {
		return fmt.Errorf("memory 0 KiB: must be greater than 0")
	}
	if d.Memory.DumpCore != "" {
		if err := oneOf("memory dumpCore", d.Memory.DumpCore, onOff); err != nil {
			return err
		}
	}
	if c := d.CurrentMemory; c != nil && c.Value != d.Memory.Value {
		return fmt.Errorf("currentMemory %d KiB: differs from memory %d KiB; minivirt does not balloon a guest down: make them equal", c.Value, d.Memory.Value)
	}
	v := d.VCPU
	if v.Value < 1 || v.Value > 255 {
		return fmt.Errorf("vcpu %d: must be 1-255", v.Value)
	}
	if v.Current > v.Value {
		return fmt.Errorf("vcpu current %d: more than the %d vcpus the domain has", v.Current, v.Value)
	}
	if v.Placement != "" && v.Placement != "static" {
		return fmt.Errorf("vcpu placement %q: not supported by minivirt (no numad); use static or remove it", v.Placement)
	}
	for _, a := range [...]struct{ elem, value string }{{"on_poweroff", d.OnPoweroff}, {"on_reboot", d.OnReboot}, {"on_crash", d.OnCrash}} {
		if err := oneOf(a.elem, a.value, lifecycleActions); err != nil {
			return err
		}
	}
	for _, s := range d.SecLabel {
		if s.Type != "none" {
			return fmt.Errorf("seclabel type %q: minivirt has no security driver (QEMU runs under seccomp); use <seclabel type='none'/> or remove it", s.Type)
		}
	}
	if e := d.Devices.Emulator; e != "" {
		if err := absPath("emulator", e); err != nil {
			return err
		}
	}
	return nil
}

func (d *Domain) validateOS() error {
	os := d.OS
	if err := notSupported("os", unhandled(os, "Type", "Firmware", "FirmwareInfo", "Loader", "NVRam", "Kernel",
		"Initrd", "Cmdline", "BootDevices", "BootMenu")); err != nil {
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
		if err := oneOf("os boot dev", b.Dev, []string{"hd", "cdrom", "network"}); err != nil {
			return err
		}
	}
	if len(os.BootDevices) > 0 && d.bootOrders() {
		return fmt.Errorf("os boot dev: cannot be combined with <boot order> on devices (libvirt refuses it too); use one of them")
	}
	if m := os.BootMenu; m != nil {
		if err := notSupported("os bootmenu", unhandled(m, "Enable")); err != nil {
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
		if err := notSupported("os loader", unhandled(l, "Path", "Readonly", "Type", "Secure", "Format")); err != nil {
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
		if err := notSupported("os nvram", unhandled(n, "NVRam", "Template", "Format")); err != nil {
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
	_, netboot := d.userInterface()
	netboot = netboot && (len(os.BootDevices) > 0 && os.BootDevices[0].Dev == "network" || d.bootOrders())
	if os.Kernel == "" && len(d.Devices.Disks) == 0 && os.Firmware != "efi" && os.Loader == nil && !netboot {
		return fmt.Errorf("os: nothing to boot; give <kernel> or a <disk>")
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

func (d *Domain) validateFeatures() error {
	f := d.Features
	if f == nil {
		return nil
	}
	if err := notSupported("features", unhandled(f, "ACPI", "APIC", "PAE", "VMPort", "SMM")); err != nil {
		return err
	}
	if f.ACPI == nil {
		return fmt.Errorf("features: no <acpi/>; minivirt always gives the guest ACPI (its power button is how shutdown works): add <acpi/>")
	}
	if f.APIC != nil && f.APIC.EOI != "" {
		return notSupported("features apic", []string{"attribute eoi"})
	}
	if f.VMPort != nil {
		if err := oneOf("features vmport state", f.VMPort.State, onOff); err != nil {
			return err
		}
	}
	if f.SMM != nil {
		if err := notSupported("features smm", unhandled(f.SMM, "State")); err != nil {
			return err
		}
		if err := oneOf("features smm state", f.SMM.State, onOff); err != nil {
			return err
		}
	}
	return nil
}

func (d *Domain) validateCPU() error {
	c := d.CPU
	if c == nil {
		return nil
	}
	if err := notSupported("cpu", unhandled(c, "Match", "Mode", "Check", "Migratable", "Model", "Topology", "Features")); err != nil {
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
		if err := notSupported("cpu model", unhandled(c.Model, "Value", "Fallback")); err != nil {
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
		if err := notSupported("cpu topology", unhandled(t, "Sockets", "Dies", "Cores", "Threads")); err != nil {
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

func (d *Domain) validateClock() error {
	c := d.Clock
	if c == nil {
		return nil
	}
	if err := notSupported("clock", unhandled(c, "Offset", "Timer")); err != nil {
		return err
	}
	if err := oneOf("clock offset", c.Offset, []string{"utc", "localtime"}); err != nil {
		return err
	}
	for _, t := range c.Timer {
		where := "clock timer " + t.Name
		if err := notSupported(where, unhandled(&t, "Name", "TickPolicy", "Present")); err != nil {
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
				return notSupported(where, []string{"attribute tickpolicy"})
			}
		default:
			return fmt.Errorf("%s: not supported by minivirt; use rtc, pit, hpet or kvmclock, or remove it", where)
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

// validateDevices refuses device kinds minivirt has nothing for.
func (d *Domain) validateDevices() error {
	if err := notSupported("devices", unhandled(d.Devices, "Emulator", "Disks", "Controllers", "Interfaces", "Serials",
		"Consoles", "Channels", "Inputs", "Graphics", "Sounds", "Audios", "Videos", "MemBalloon", "RNGs", "Panics",
		"RedirDevs")); err != nil {
		return err
	}
	for _, r := range d.Devices.RedirDevs {
		if r.Source == nil || r.Source.SpiceVMC == nil {
			return fmt.Errorf("redirdev: only type='spicevmc' (SPICE USB redirection) is kept; remove it")
		}
	}
	return nil
}

func (d *Domain) validateDisks() error {
	seen := map[string]bool{}
	for _, disk := range d.Devices.Disks {
		if disk.Target == nil || !diskTargetPattern().MatchString(disk.Target.Dev) {
			dev := ""
			if disk.Target != nil {
				dev = disk.Target.Dev
			}
			return fmt.Errorf("disk target dev %q: must be a name such as vda, sda or hdc", dev)
		}
		where := "disk " + disk.Target.Dev
		if seen[disk.Target.Dev] {
			return fmt.Errorf("%s: target dev used twice", where)
		}
		seen[disk.Target.Dev] = true
		if err := notSupported(where, unhandled(&disk, "Device", "Driver", "Source", "Target", "ReadOnly", "Shareable",
			"Transient", "Serial", "Boot", "Alias", "Address")); err != nil {
			return err
		}
		if err := oneOf(where+" device", disk.Device, []string{"disk", "cdrom"}); err != nil {
			return err
		}
		if err := notSupported(where+" target", unhandled(disk.Target, "Dev", "Bus", "Tray")); err != nil {
			return err
		}
		if err := oneOf(where+" target bus", disk.Target.Bus, diskBuses); err != nil {
			return err
		}
		bus := disk.Target.Bus
		if bus == "" {
			bus = map[string]string{"vd": "virtio", "sd": "sata", "hd": "ide"}[disk.Target.Dev[:2]]
		}
		if err := d.checkDriveAddress(where, disk, bus); err != nil {
			return err
		}
		if disk.Target.Tray != "" && (disk.Device != "cdrom" || disk.Target.Tray != "closed") {
			return fmt.Errorf("%s target tray %q: minivirt starts every cdrom closed; remove it", where, disk.Target.Tray)
		}
		if err := validateDiskSource(where, disk); err != nil {
			return err
		}
		if dr := disk.Driver; dr != nil {
			if err := notSupported(where+" driver", unhandled(dr, "Name", "Type", "Cache", "IO", "Discard", "DetectZeros",
				"ErrorPolicy", "RErrorPolicy")); err != nil {
				return err
			}
			for _, c := range [...]struct {
				elem, value string
				allowed     []string
			}{
				{"name", dr.Name, []string{"qemu"}}, {"type", dr.Type, diskFormats}, {"cache", dr.Cache, diskCaches},
				{"io", dr.IO, diskIO}, {"discard", dr.Discard, []string{"unmap", "ignore"}},
				{"detect_zeroes", dr.DetectZeros, []string{"off", "on", "unmap"}},
				{"error_policy", dr.ErrorPolicy, diskErrorPolicies}, {"rerror_policy", dr.RErrorPolicy, diskErrorPolicies},
			} {
				if err := oneOf(where+" driver "+c.elem, c.value, c.allowed); err != nil {
					return err
				}
			}
			if dr.IO == "native" && dr.Cache != "none" && dr.Cache != "directsync" {
				return fmt.Errorf("%s driver io='native': needs cache='none' or 'directsync' (QEMU refuses it otherwise)", where)
			}
		}
		if disk.Transient != nil {
			if disk.Transient.ShareBacking != "" {
				return notSupported(where+" transient", []string{"attribute shareBacking"})
			}
			if disk.ReadOnly != nil || disk.Shareable != nil || disk.Device == "cdrom" {
				return fmt.Errorf("%s transient: only for a writable, unshared disk", where)
			}
		}
		if disk.Boot != nil && disk.Boot.LoadParm != "" {
			return notSupported(where+" boot", []string{"attribute loadparm"})
		}
		if strings.ContainsAny(disk.Serial, ",\x00") || len(disk.Serial) > 20 {
			return fmt.Errorf("%s serial %q: at most 20 characters, no commas", where, disk.Serial)
		}
	}
	return nil
}

func validateDiskSource(where string, disk libvirtxml.DomainDisk) error {
	s := disk.Source
	if s == nil || s.File == nil && s.Block == nil {
		if disk.Device == "cdrom" && s == nil {
			return fmt.Errorf("%s: an empty cdrom is not supported by minivirt; give <source file=''/>", where)
		}
		return fmt.Errorf("%s: source must be type='file' (an image) or type='block' (a host block device)", where)
	}
	if err := notSupported(where+" source", unhandled(s, "File", "Block")); err != nil {
		return err
	}
	if s.File != nil {
		if err := notSupported(where+" source", unhandled(s.File, "File")); err != nil {
			return err
		}
		return absPath(where+" source file", s.File.File)
	}
	if err := notSupported(where+" source", unhandled(s.Block, "Dev")); err != nil {
		return err
	}
	return absPath(where+" source dev", s.Block.Dev)
}

func (d *Domain) validateInterfaces() error {
	users := 0
	for _, nic := range d.Devices.Interfaces {
		if nic.Source == nil || nic.Source.User == nil {
			kind := unhandled(nic.Source)
			return fmt.Errorf("interface %s: not supported by minivirt; use type='user' (or a vmchannel)", strings.Join(kind, ""))
		}
		users++
		if users > 1 {
			return fmt.Errorf("interface type 'user': minivirt supports one user-mode NIC per domain")
		}
		if err := notSupported("interface type 'user'", unhandled(&nic, "MAC", "Source", "Model", "Boot", "Alias", "Link", "Address", "PortForward")); err != nil {
			return err
		}
		if err := checkPCIAddress("interface type 'user'", nic.Address); err != nil {
			return err
		}
		if nic.Source.User.Dev != "" {
			return notSupported("interface type 'user' source", []string{"attribute dev"})
		}
		if err := oneOf("interface model type", nic.Model.Type, nicModels); err != nil {
			return err
		}
		if nic.MAC != nil {
			if hw, err := net.ParseMAC(nic.MAC.Address); err != nil || len(hw) != 6 {
				return fmt.Errorf("interface mac address %q: must be six bytes such as 52:54:00:12:34:56", nic.MAC.Address)
			}
			if err := notSupported("interface mac", unhandled(nic.MAC, "Address")); err != nil {
				return err
			}
		}
		if nic.Link != nil && nic.Link.State != "up" {
			return fmt.Errorf("interface link state %q: minivirt starts every link up; remove it", nic.Link.State)
		}
	}
	return nil
}

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

func (d *Domain) validateChannels() error {
	names := map[string]bool{}
	for _, ch := range d.Devices.Channels {
		if ch.Target == nil || ch.Target.GuestFWD == nil && ch.Target.VirtIO == nil {
			return fmt.Errorf("channel target %s: not supported; use guestfwd or virtio", strings.Join(unhandled(ch.Target), ""))
		}
		if ch.Source == nil || ch.Source.UNIX == nil {
			return fmt.Errorf("channel source %s: not supported; use type='unix'", strings.Join(unhandled(ch.Source), ""))
		}
		src := ch.Source.UNIX
		switch {
		case ch.Target.GuestFWD != nil:
			t := ch.Target.GuestFWD
			if err := notSupported("channel guestfwd", unhandled(&ch, "Source", "Target", "Alias")); err != nil {
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
			if err := notSupported("channel virtio "+n, unhandled(&ch, "Source", "Target", "Alias")); err != nil {
				return err
			}
			if ch.Target.VirtIO.State != "" {
				return notSupported("channel virtio "+n+" target", []string{"attribute state"})
			}
			if !virtioPortPattern().MatchString(n) {
				return fmt.Errorf("channel virtio target name %q: must be a port name such as org.qemu.guest_agent.0", n)
			}
			if names[n] {
				return fmt.Errorf("channel virtio target name %q: used twice", n)
			}
			names[n] = true
			if src.Mode != "bind" {
				return fmt.Errorf("channel virtio %s source mode %q: must be bind (minivirt creates the socket)", n, src.Mode)
			}
			if src.Path != "" {
				if err := socketPath("channel virtio "+n+" source path", src.Path); err != nil {
					return err
				}
			}
		}
		if err := notSupported("channel source", unhandled(src, "Mode", "Path")); err != nil {
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

func (d *Domain) validateControllers() error {
	for _, c := range d.Devices.Controllers {
		where := "controller type " + c.Type
		if c.Model != "" {
			where += " model " + c.Model
		}
		if err := notSupported(where, unhandled(&c, "Type", "Index", "Model", "Alias", "USB", "PCI", "VirtIOSerial", "Address")); err != nil {
			return err
		}
		if c.Type == "sata" || c.Type == "ide" || c.Type == "pci" && c.Model != "pcie-root-port" {
			if c.Address != nil && c.Address.PCI == nil {
				return notSupported(where, []string{"<address>"})
			}
		} else if err := checkPCIAddress(where, c.Address); err != nil {
			return err
		}
		switch c.Type {
		case "usb":
			if err := oneOf(where, c.Model, []string{"qemu-xhci", "nec-xhci", "ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3", "piix3-uhci", "none"}); err != nil {
				return err
			}
			if u := c.USB; u != nil {
				if err := notSupported(where, unhandled(u, "Port", "Master")); err != nil {
					return err
				}
			}
		case "pci":
			if err := oneOf(where, c.Model, []string{"pcie-root", "pci-root", "pcie-root-port"}); err != nil {
				return err
			}
			if p := c.PCI; p != nil {
				if err := notSupported(where, unhandled(p)); err != nil {
					return err
				}
			}
		case "virtio-serial":
			if v := c.VirtIOSerial; v != nil {
				if err := notSupported(where, unhandled(v)); err != nil {
					return err
				}
			}
		case "sata", "ide":
			if c.Index != nil && *c.Index != 0 {
				return fmt.Errorf("%s index %d: minivirt uses the machine's own controller; remove it", where, *c.Index)
			}
		default:
			return fmt.Errorf("%s: not supported by minivirt; use usb, pci, virtio-serial, sata or ide", where)
		}
	}
	return nil
}

func (d *Domain) validateOtherDevices() error {
	if b := d.Devices.MemBalloon; b != nil {
		if err := notSupported("memballoon", unhandled(b, "Model", "Alias", "Address")); err != nil {
			return err
		}
		if err := checkPCIAddress("memballoon", b.Address); err != nil {
			return err
		}
		if err := oneOf("memballoon model", b.Model, []string{"virtio", "none"}); err != nil {
			return err
		}
	}
	for _, r := range d.Devices.RNGs {
		if err := notSupported("rng", unhandled(&r, "Model", "Backend", "Rate", "Alias", "Address")); err != nil {
			return err
		}
		if err := checkPCIAddress("rng", r.Address); err != nil {
			return err
		}
		if r.Model != "virtio" {
			return fmt.Errorf("rng model %q: must be virtio", r.Model)
		}
		if r.Backend == nil || r.Backend.Random == nil && r.Backend.BuiltIn == nil {
			return fmt.Errorf("rng backend: must be random (a host device) or builtin")
		}
		if r.Backend.Random != nil {
			if err := oneOf("rng backend random", r.Backend.Random.Device, []string{"/dev/urandom", "/dev/random", "/dev/hwrng"}); err != nil {
				return err
			}
		}
		if rt := r.Rate; rt != nil && rt.Bytes == 0 {
			return fmt.Errorf("rng rate bytes: must be greater than 0")
		}
	}
	for i, v := range d.Devices.Videos {
		where := fmt.Sprintf("video %d", i)
		if err := notSupported(where, unhandled(&v, "Model", "Alias", "Address")); err != nil {
			return err
		}
		if err := checkPCIAddress(where, v.Address); err != nil {
			return err
		}
		if err := notSupported(where+" model", unhandled(&v.Model, "Type", "Heads", "Primary", "VRam", "Ram", "VGAMem")); err != nil {
			return err
		}
		if err := oneOf(where+" model type", v.Model.Type, videoModels); err != nil {
			return err
		}
		if v.Model.Heads > 1 {
			return fmt.Errorf("%s model heads %d: minivirt gives one head", where, v.Model.Heads)
		}
	}
	for i, in := range d.Devices.Inputs {
		where := fmt.Sprintf("input %d", i)
		handled := []string{"Type", "Bus", "Alias"}
		if in.Source != nil && *in.Source == (libvirtxml.DomainInputSource{}) {
			handled = append(handled, "Source") // libvirtxml makes an empty one for every input
		}
		if err := notSupported(where, unhandled(&in, handled...)); err != nil {
			return err
		}
		if err := oneOf(where+" type", in.Type, []string{"mouse", "keyboard", "tablet"}); err != nil {
			return err
		}
		if err := oneOf(where+" bus", in.Bus, []string{"ps2", "usb", "virtio"}); err != nil {
			return err
		}
		if in.Bus == "ps2" && in.Type == "tablet" {
			return fmt.Errorf("%s: a tablet on ps2 does not exist; use bus='usb' or 'virtio'", where)
		}
	}
	for i, snd := range d.Devices.Sounds {
		where := fmt.Sprintf("sound %d", i)
		if err := notSupported(where, unhandled(&snd, "Model", "Codec", "Alias", "Address")); err != nil {
			return err
		}
		if err := checkPCIAddress(where, snd.Address); err != nil {
			return err
		}
		if err := oneOf(where+" model", snd.Model, []string{"ich6", "ich9", "ac97", "es1370"}); err != nil {
			return err
		}
		for _, c := range snd.Codec {
			if err := oneOf(where+" codec type", c.Type, []string{"duplex", "micro", "output"}); err != nil {
				return err
			}
		}
	}
	for _, p := range d.Devices.Panics {
		if err := notSupported("panic", unhandled(&p, "Model", "Alias")); err != nil {
			return err
		}
		if err := oneOf("panic model", p.Model, []string{"isa", "pvpanic"}); err != nil {
			return err
		}
	}
	if len(d.Devices.Panics) > 1 {
		return fmt.Errorf("panic: given %d times; give one", len(d.Devices.Panics))
	}
	return nil
}

func (d *Domain) validateNetwork() error {
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

// reservedOptions are QEMU options minivirt passes itself: a
// <qemu:commandline> that passes one too would collide with them.
var reservedOptions = []string{
	"-name", "-uuid", "-machine", "-M", "-accel", "-enable-kvm", "-cpu", "-m", "-smp", "-nodefaults",
	"-no-user-config", "-display", "-nographic", "-S", "-no-shutdown", "-action", "-sandbox", "-mon", "-qmp",
	"-monitor", "-serial", "-kernel", "-initrd", "-append", "-daemonize", "-pidfile", "-runas", "-chroot",
	"-no-reboot", "-boot", "-rtc", "-bios", "-drive", "-blockdev",
}

func (d *Domain) validateCommandline() error {
	c := d.QEMUCommandline
	if c == nil {
		return nil
	}
	for _, a := range c.Args {
		opt := a.Value
		if strings.HasPrefix(opt, "--") {
			opt = opt[1:]
		}
		if contains(reservedOptions, opt) {
			return fmt.Errorf("qemu:commandline arg %q: minivirt passes %s itself; express it in the domain XML instead", a.Value, opt)
		}
		if strings.ContainsRune(a.Value, 0) {
			return fmt.Errorf("qemu:commandline arg %q: contains a NUL byte", a.Value)
		}
		if strings.Contains(a.Value, "id="+netdevID) {
			return fmt.Errorf("qemu:commandline arg %q: this is minivirt's export for libvirt; define the domain minivirt exported instead", a.Value)
		}
		if strings.Contains(a.Value, "id=monitor") || strings.Contains(a.Value, "id=console0") {
			return fmt.Errorf("qemu:commandline arg %q: the id is minivirt's own; use another", a.Value)
		}
	}
	for _, e := range c.Envs {
		if e.Name == "" || strings.ContainsAny(e.Name, "=\x00") {
			return fmt.Errorf("qemu:commandline env name %q: must be a variable name", e.Name)
		}
	}
	return nil
}

// Tainted reports whether the domain passes QEMU options minivirt did not
// write itself (<qemu:commandline>), as libvirt marks such a domain
// "tainted: custom-argv".
func (d *Domain) Tainted() bool {
	return d.QEMUCommandline != nil && (len(d.QEMUCommandline.Args) > 0 || len(d.QEMUCommandline.Envs) > 0)
}

// checkVMChannel checks one vmchannel's fields; path is checked when checkPath.
func checkVMChannel(addr string, port uint, path, proxy string, maxConns uint, checkPath bool) error {
	if port < 1 || port > 65535 {
		return fmt.Errorf("vmchannel port %d: must be 1-65535", port)
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

func absPath(elem, p string) error {
	if p == "" {
		return fmt.Errorf("%s: missing", elem)
	}
	if strings.ContainsRune(p, 0) {
		return fmt.Errorf("%s %q: contains a NUL byte", elem, p)
	}
	if !filepath.IsAbs(p) {
		return fmt.Errorf("%s %q: must be an absolute path", elem, p)
	}
	return nil
}

// socketPath checks a Unix socket path: absolute, and short enough for sun_path.
func socketPath(elem, p string) error {
	if err := absPath(elem, p); err != nil {
		return err
	}
	if len(p) > MaxSocketPath {
		return fmt.Errorf("%s %q: %d bytes, longer than the %d a Unix socket path may have", elem, p, len(p), MaxSocketPath)
	}
	return nil
}
