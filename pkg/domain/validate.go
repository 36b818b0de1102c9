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

// Validate checks every rule of the model and refuses, naming it, what is
// invalid or what minivirt could only get wrong (RefusedAtDefine), and every
// element minivirt would otherwise drop or misread. What a valid domain
// needs that minivirt cannot give it here is not refused: it is kept, and
// CheckStart refuses it (RefusedAtStart). When several rules fail, the first
// is reported.
func (d *Domain) Validate() error {
	_, err := d.check()
	return err
}

// CheckStart reports, for a valid domain, the first thing that keeps it from
// starting that the definition alone tells (RefusedAtStart): what it needs
// from this host that minivirt cannot give it, or nothing to boot. Files and
// devices the host lacks are checked by the supervisor at start.
func (d *Domain) CheckStart() error {
	atStart, err := d.check()
	if err != nil {
		return err
	}
	if len(atStart) > 0 {
		return errors.New(atStart[0])
	}
	return nil
}

// RefusedAtStart lists everything CheckStart would refuse, one line each:
// define says each out loud, and status shows them.
func (d *Domain) RefusedAtStart() []string {
	atStart, _ := d.check()
	return atStart
}

// checker runs the rules over one domain, collecting what start refuses.
type checker struct {
	d       *Domain
	atStart []string
}

func (d *Domain) check() ([]string, error) {
	ck := &checker{d: d}
	for _, check := range []func() error{
		ck.validateKept, ck.validateTop, ck.validateMemory, ck.validateOS, ck.validateFeatures, ck.validateCPU, ck.validateClock,
		ck.validateDevices, ck.validateDisks, ck.validateInterfaces, ck.validateChardevs, ck.validateChannels,
		ck.validateControllers, ck.validateOtherDevices, ck.validateFilesystems, ck.validateNetwork, ck.validateForwards,
		ck.validateCommandline, ck.validatePlatform, ck.validateBoot,
	} {
		if err := check(); err != nil {
			return nil, err
		}
	}
	return ck.atStart, nil
}

// unsupported records what minivirt cannot run: libvirt defines it, so
// minivirt keeps it, and start refuses it (RefusedAtStart). It returns nil:
// the rules go on.
func (ck *checker) unsupported(where string, what []string) error {
	if len(what) > 0 {
		ck.refuseAtStart("%s: %s not supported by minivirt; remove it to start the domain", where, strings.Join(what, ", "))
	}
	return nil
}

// refuseAtStart records one line start refuses the domain with. A value
// of the document that holds a line break keeps it escaped: one line.
func (ck *checker) refuseAtStart(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	line = strings.NewReplacer("\n", `\n`, "\r", `\r`).Replace(line)
	ck.atStart = append(ck.atStart, line)
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
func (ck *checker) validateKept() error {
	d := ck.d
	if len(d.dropped) == 0 {
		return nil
	}
	if len(d.dropped) > 1 {
		return fmt.Errorf("%s (and %d more)", d.dropped[0], len(d.dropped)-1)
	}
	return errors.New(d.dropped[0])
}

func (ck *checker) validateTop() error {
	d := ck.d
	if d.Type != "kvm" && d.Type != "qemu" {
		return fmt.Errorf("domain type %q: must be 'kvm' (KVM when usable, else TCG) or 'qemu' (TCG)", d.Type)
	}
	if err := ValidName(d.Name); err != nil {
		return err
	}
	if _, err := canonicalUUID(d.UUID); err != nil {
		return err
	}
	if err := ck.unsupported("domain", unhandled(&d.Domain, "Type", "Name", "UUID", "Title", "Description", "Metadata",
		"Memory", "CurrentMemory", "VCPU", "OS", "Features", "CPU", "Clock", "OnPoweroff", "OnReboot", "OnCrash",
		"PM", "Devices", "SecLabel", "QEMUCommandline", "ID", "MaximumMemory", "MemoryBacking", "IOThreads", "IOThreadIDs",
		"SysInfo", "GenID", "CPUTune", "NUMATune", "MemoryTune", "BlockIOTune", "Resource")); err != nil {
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
		switch {
		case contains(lifecycleActions, a.value):
		case contains([]string{"rename-restart", "coredump-destroy", "coredump-restart", "preserve-running"}, a.value):
			ck.refuseAtStart("%s %s: minivirt does destroy, restart or preserve; change it to start the domain", a.elem, a.value)
		default:
			return fmt.Errorf("%s %q: must be destroy, restart or preserve", a.elem, a.value)
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
