package domain

import (
	"encoding/xml"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// MaxSocketPath is the longest Unix socket path Linux accepts (sun_path less
// its terminating NUL).
const MaxSocketPath = 107

var (
	namePattern        = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	machinePattern     = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	diskTargetPattern  = lazyRegexp(`^(vd|sd|hd)[a-z]{1,3}$`)
	virtioPortPattern  = lazyRegexp(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	lifecycleActions   = map[string]bool{"destroy": true, "restart": true, "preserve": true}
	nicModels          = map[string]bool{"virtio": true, "e1000": true, "rtl8139": true}
	diskBuses          = map[string]bool{"virtio": true, "ide": true, "sata": true}
	diskFormats        = map[string]bool{"raw": true, "qcow2": true}
	dhcpFirst, dhcpEnd = 15, 30 // libslirp hands out 10.0.2.15-10.0.2.30
)

// ValidName reports whether name may name a domain.
func ValidName(name string) error {
	if !namePattern().MatchString(name) {
		return fmt.Errorf("name %q: must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit", name)
	}
	return nil
}

// Validate checks every rule of the model. The error names the element and
// the value at fault; when several rules fail, the first is reported.
func (d *Domain) Validate() error {
	for _, check := range []func() error{d.validateKept, d.validateTop, d.validateOS, d.validateDisks, d.validateInterfaces, d.validateChannels, d.validateNetwork, d.validateCharDevs} {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// xmlName is what encoding/xml writes back unchanged as an element or
// attribute name.
var xmlName = lazyRegexp(`^[A-Za-z_][A-Za-z0-9._-]*$`)

// lazyRegexp compiles expr on first use. The minivirt binary is also the
// vmchannel helper, started once per guest connection: compiling every
// pattern at start-up would cost each connection half a millisecond.
func lazyRegexp(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// validateKept refuses what minivirt cannot keep verbatim: namespaced
// elements and attributes (such as qemu:commandline, which would change
// QEMU's argv besides) do not survive encoding/xml's writer.
func (d *Domain) validateKept() error {
	attrs := func(where string, as []xml.Attr) error {
		for _, a := range as {
			if a.Name.Space != "" || !xmlName().MatchString(a.Name.Local) {
				return fmt.Errorf("%s attribute %q: namespaced or unusual attributes are not supported", where, qualified(a.Name))
			}
		}
		return nil
	}
	if err := attrs("domain", d.ExtraAttrs); err != nil {
		return err
	}
	if err := attrs("vcpu", d.VCPU.ExtraAttrs); err != nil {
		return err
	}
	for _, group := range [][]Raw{d.Extra, d.OS.Extra, d.Devices.Extra} {
		for _, r := range group {
			if r.XMLName.Space != "" || !xmlName().MatchString(r.XMLName.Local) {
				return fmt.Errorf("element <%s>: namespaced elements are not supported", qualified(r.XMLName))
			}
			if err := attrs("<"+r.XMLName.Local+">", r.Attrs); err != nil {
				return err
			}
		}
	}
	return nil
}

func qualified(n xml.Name) string {
	if n.Space == "" {
		return n.Local
	}
	return n.Space + ":" + n.Local
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
	if d.Memory.KiB == 0 {
		return fmt.Errorf("memory %q KiB: must be greater than 0", d.Memory.Value)
	}
	if d.VCPU.Count < 1 || d.VCPU.Count > 255 {
		return fmt.Errorf("vcpu %d: must be 1-255", d.VCPU.Count)
	}
	for _, a := range [...]struct{ elem, value string }{{"on_poweroff", d.OnPoweroff}, {"on_reboot", d.OnReboot}, {"on_crash", d.OnCrash}} {
		if !lifecycleActions[a.value] {
			return fmt.Errorf("%s %q: must be destroy, restart or preserve", a.elem, a.value)
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
	if os.Type.Value != "hvm" {
		return fmt.Errorf("os type %q: must be hvm", os.Type.Value)
	}
	if os.Type.Arch != "x86_64" {
		return fmt.Errorf("os type arch %q: minivirt runs x86_64 guests only", os.Type.Arch)
	}
	if m := os.Type.Machine; m != "" && !machinePattern().MatchString(m) {
		return fmt.Errorf("os type machine %q: must be a QEMU machine name such as q35 or pc", m)
	}
	if os.Kernel != "" {
		if err := absPath("os kernel", os.Kernel); err != nil {
			return err
		}
	}
	if os.Initrd != "" {
		if os.Kernel == "" {
			return fmt.Errorf("os initrd %q: needs a <kernel>", os.Initrd)
		}
		if err := absPath("os initrd", os.Initrd); err != nil {
			return err
		}
	}
	if os.Cmdline != "" && os.Kernel == "" {
		return fmt.Errorf("os cmdline %q: needs a <kernel>", os.Cmdline)
	}
	if os.Kernel == "" && len(d.Devices.Disks) == 0 {
		return fmt.Errorf("os: nothing to boot; give <kernel> or a <disk>")
	}
	return nil
}

func (d *Domain) validateDisks() error {
	seen := map[string]bool{}
	for _, disk := range d.Devices.Disks {
		if disk.Type != "file" {
			return fmt.Errorf("disk type %q: not supported; use type='file'", disk.Type)
		}
		if disk.Device != "" && disk.Device != "disk" && disk.Device != "cdrom" {
			return fmt.Errorf("disk device %q: not supported; use 'disk' or 'cdrom'", disk.Device)
		}
		if disk.Driver != nil {
			if disk.Driver.Name != "" && disk.Driver.Name != "qemu" {
				return fmt.Errorf("disk driver name %q: must be qemu", disk.Driver.Name)
			}
			if t := disk.Driver.Type; t != "" && !diskFormats[t] {
				return fmt.Errorf("disk driver type %q: not supported; use raw or qcow2", t)
			}
		}
		if err := absPath("disk source file", disk.Source.File); err != nil {
			return err
		}
		if !diskTargetPattern().MatchString(disk.Target.Dev) {
			return fmt.Errorf("disk target dev %q: must be a name such as vda, sda or hdc", disk.Target.Dev)
		}
		if seen[disk.Target.Dev] {
			return fmt.Errorf("disk target dev %q: used twice", disk.Target.Dev)
		}
		seen[disk.Target.Dev] = true
		if b := disk.Target.Bus; b != "" && !diskBuses[b] {
			return fmt.Errorf("disk target bus %q: not supported; use virtio, ide or sata", b)
		}
	}
	return nil
}

func (d *Domain) validateInterfaces() error {
	users := 0
	for _, nic := range d.Devices.Interfaces {
		switch nic.Type {
		case "user":
			users++
			if users > 1 {
				return fmt.Errorf("interface type 'user': minivirt supports one user-mode NIC per domain")
			}
			if nic.Source != nil || nic.Target != nil {
				return fmt.Errorf("interface type 'user': takes no <source> or <target>")
			}
			if !nicModels[nic.Model.Type] {
				return fmt.Errorf("interface model type %q: not supported; use virtio, e1000 or rtl8139", nic.Model.Type)
			}
			if nic.MAC != nil {
				if hw, err := net.ParseMAC(nic.MAC.Address); err != nil || len(hw) != 6 {
					return fmt.Errorf("interface mac address %q: must be six bytes such as 52:54:00:12:34:56", nic.MAC.Address)
				}
			}
		case "vmchannel":
			if nic.Source == nil || nic.Source.Port == "" {
				return fmt.Errorf("vmchannel: missing <source port=''/>")
			}
			if nic.Target == nil || nic.Target.Path == "" {
				return fmt.Errorf("vmchannel port %s: missing <target path=''/>", nic.Source.Port)
			}
			if nic.MAC != nil || nic.Model != nil {
				return fmt.Errorf("vmchannel port %s: takes no <mac> or <model>", nic.Source.Port)
			}
			if err := checkVMChannel(nic.Source.Address, nic.Source.Port, nic.Target.Path, nic.Target.Proxy, nic.Target.MaxConnections); err != nil {
				return err
			}
		default:
			return fmt.Errorf("interface type %q: not supported; use 'user' or 'vmchannel'", nic.Type)
		}
	}
	return nil
}

func (d *Domain) validateChannels() error {
	names := map[string]bool{}
	for _, ch := range d.Devices.Channels {
		if ch.Type != "unix" {
			return fmt.Errorf("channel type %q: not supported; use type='unix'", ch.Type)
		}
		switch ch.Target.Type {
		case "guestfwd":
			if ch.Source.Mode != "connect" {
				return fmt.Errorf("channel guestfwd source mode %q: must be connect", ch.Source.Mode)
			}
			if ch.Target.Port == "" || ch.Target.Address == "" {
				return fmt.Errorf("channel guestfwd: target needs address='' and port=''")
			}
			if err := checkVMChannel(ch.Target.Address, ch.Target.Port, ch.Source.Path, ch.Target.Proxy, ch.Target.MaxConnections); err != nil {
				return err
			}
		case "virtio":
			n := ch.Target.Name
			if !virtioPortPattern().MatchString(n) {
				return fmt.Errorf("channel virtio target name %q: must be a port name such as org.qemu.guest_agent.0", n)
			}
			if names[n] {
				return fmt.Errorf("channel virtio target name %q: used twice", n)
			}
			names[n] = true
			if ch.Source.Mode != "bind" {
				return fmt.Errorf("channel virtio %s source mode %q: must be bind (minivirt creates the socket)", n, ch.Source.Mode)
			}
			if err := socketPath("channel virtio "+n+" source path", ch.Source.Path); err != nil {
				return err
			}
		default:
			return fmt.Errorf("channel target type %q: not supported; use guestfwd or virtio", ch.Target.Type)
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
	bound := map[string]bool{}
	for _, p := range d.VirtioPorts() {
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

func (d *Domain) validateNetwork() error {
	if d.Devices.VMChannels == nil {
		return nil
	}
	switch n := d.Devices.VMChannels.Network; n {
	case NetworkSlirp:
	case NetworkNetstack:
		for _, nic := range d.Devices.Interfaces {
			if nic.Type == "user" {
				return fmt.Errorf("vmchannels network 'netstack': has no NAT and cannot serve <interface type='user'>; remove that interface or use network='slirp'")
			}
		}
	default:
		return fmt.Errorf("vmchannels network %q: must be netstack (minivirt's own network) or slirp (QEMU's)", n)
	}
	return nil
}

func (d *Domain) validateCharDevs() error {
	if len(d.Devices.Serials) > 1 {
		return fmt.Errorf("serial: minivirt supports one serial port per domain")
	}
	for _, c := range append(append([]CharDev{}, d.Devices.Serials...), d.Devices.Consoles...) {
		if c.Type != "pty" {
			return fmt.Errorf("serial/console type %q: not supported; use type='pty' (minivirt logs the console and serves `minivirt console`)", c.Type)
		}
	}
	return nil
}

// checkVMChannel checks one vmchannel's fields as they appear in the XML.
func checkVMChannel(addr, port, path, proxy, maxConns string) error {
	p, err := strconv.ParseUint(port, 10, 32)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("vmchannel port %s: must be 1-65535", port)
	}
	if err := CheckAddress(addr, port); err != nil {
		return err
	}
	if err := socketPath("vmchannel port "+port+" path", path); err != nil {
		return err
	}
	if proxy != ProxyNone && proxy != ProxyV2 {
		return fmt.Errorf("vmchannel port %s proxy %q: must be v2 or absent", port, proxy)
	}
	if maxConns != "" {
		n, err := strconv.Atoi(maxConns)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("vmchannel port %s maxconnections %q: must be 1-65535", port, maxConns)
		}
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
