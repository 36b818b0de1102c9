package domain

import (
	"fmt"
	"net"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// The rules of the guest's other devices: which kinds a domain may have,
// <interface>, <controller>, <memballoon>, <rng>, <video>, <input>, <sound>
// and <panic>; and of <qemu:commandline>.

var (
	nicModels   = []string{"virtio", "e1000", "e1000e", "rtl8139"}
	videoModels = []string{"vga", "cirrus", "virtio", "qxl", "bochs", "ramfb", "none"}
)

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
