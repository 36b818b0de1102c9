package domain

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// MaxSocketPath is the longest Unix socket path Linux accepts (sun_path less
// its terminating NUL).
const MaxSocketPath = 107

var (
	namePattern      = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	lifecycleActions = []string{"destroy", "restart", "preserve"}
	onOff            = []string{"on", "off"}
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
