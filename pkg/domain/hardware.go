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

// validateDevices sorts the device kinds: those minivirt acts on are
// checked below; the others are kept and start refuses them.
func (ck *checker) validateDevices() error {
	d := ck.d
	ck.unsupported("devices", unhandled(d.Devices, "Emulator", "Disks", "Controllers", "Interfaces", "Serials",
		"Consoles", "Channels", "Inputs", "Graphics", "Sounds", "Audios", "Videos", "MemBalloon", "RNGs", "Panics",
		"RedirDevs", "Watchdogs", "Filesystems", "Memorydevs"))
	for _, r := range d.Devices.RedirDevs {
		if r.Source == nil || r.Source.SpiceVMC == nil {
			ck.refuseAtStart("redirdev: minivirt redirects no USB device; only type='spicevmc' is kept; remove it to start the domain")
		}
	}
	return nil
}

// NICs are minivirt's user-mode NICs: <interface type='user'>, and
// <interface type='network'>, which minivirt gives its user network with
// NAT, as libvirt's default network is NAT too.
func isUserNIC(nic libvirtxml.DomainInterface) bool {
	return nic.Source != nil && (nic.Source.User != nil || nic.Source.Network != nil)
}

func (ck *checker) validateInterfaces() error {
	d := ck.d
	users := 0
	for _, nic := range d.Devices.Interfaces {
		if !isUserNIC(nic) {
			kind := "without a type"
			if nic.Source != nil {
				kind = strings.Join(unhandled(nic.Source), "")
			}
			ck.refuseAtStart("interface %s: minivirt has no such network (it runs QEMU unprivileged); use type='user' or type='network', or a vmchannel", kind)
			continue
		}
		where := "interface type 'user'"
		if nic.Source.Network != nil {
			where = "interface type 'network'"
			ck.unsupported(where+" source", unhandled(nic.Source.Network, "Network", "PortGroup", "PortID", "Bridge"))
		}
		users++
		if users > 1 {
			ck.refuseAtStart("%s: minivirt gives a domain one user-mode NIC; remove the others to start the domain", where)
			continue
		}
		ck.unsupported(where, unhandled(&nic, "MAC", "Source", "Model", "Boot", "Alias", "Link", "Address", "PortForward", "Driver", "MTU"))
		if err := ck.checkPCIAddress(where, nic.Address); err != nil {
			return err
		}
		if nic.Source.User != nil && nic.Source.User.Dev != "" {
			ck.unsupported("interface type 'user' source", []string{"attribute dev"})
		}
		if !contains(nicModels, nic.Model.Type) {
			ck.refuseAtStart("interface model type %q: minivirt gives the guest %s; change it to start the domain", nic.Model.Type, strings.Join(nicModels, ", "))
		}
		if dr := nic.Driver; dr != nil {
			ck.unsupported(where+" driver", unhandled(dr, "Name"))
			if dr.Name != "" && dr.Name != "qemu" {
				ck.refuseAtStart("%s driver name %q: a user-mode NIC is QEMU's own; remove it to start the domain", where, dr.Name)
			}
		}
		if nic.MAC != nil {
			if hw, err := net.ParseMAC(nic.MAC.Address); err != nil || len(hw) != 6 {
				return fmt.Errorf("interface mac address %q: must be six bytes such as 52:54:00:12:34:56", nic.MAC.Address)
			}
			ck.unsupported("interface mac", unhandled(nic.MAC, "Address"))
		}
		if nic.Link != nil && nic.Link.State != "up" {
			ck.refuseAtStart("interface link state %q: minivirt starts every link up; remove it to start the domain", nic.Link.State)
		}
		if nic.MTU != nil && nic.MTU.Size != 0 && nic.MTU.Size != 1500 {
			ck.refuseAtStart("interface mtu size %d: QEMU's user network has MTU 1500; remove it to start the domain", nic.MTU.Size)
		}
	}
	return nil
}

// SCSIModels are the SCSI controllers minivirt gives the guest, by
// libvirt's model name; "" is libvirt's default on x86, lsilogic.
var scsiModels = []string{"virtio-scsi", "lsilogic"}

func (ck *checker) validateControllers() error {
	d := ck.d
	for _, c := range d.Devices.Controllers {
		where := "controller type " + c.Type
		if c.Model != "" {
			where += " model " + c.Model
		}
		ck.unsupported(where, unhandled(&c, "Type", "Index", "Model", "Alias", "USB", "PCI", "VirtIOSerial", "Address", "Driver"))
		if c.Type == "sata" || c.Type == "ide" || c.Type == "fdc" || c.Type == "pci" && c.Model != "pcie-root-port" {
			if c.Address != nil && c.Address.PCI == nil {
				ck.unsupported(where, []string{"<address>"})
			}
		} else if err := ck.checkPCIAddress(where, c.Address); err != nil {
			return err
		}
		if c.Driver != nil {
			if c.Type != "scsi" {
				ck.unsupported(where, []string{"<driver>"})
			} else if c.Model != "virtio-scsi" {
				ck.refuseAtStart("%s driver: only a virtio-scsi controller takes queues, iothread, cmd_per_lun and max_sectors; remove it to start the domain", where)
			} else {
				ck.unsupported(where+" driver", unhandled(c.Driver, "Queues", "IOThread", "CmdPerLUN", "MaxSectors"))
				if c.Driver.IOThread != 0 && !d.hasIOThread(c.Driver.IOThread) {
					return fmt.Errorf("%s driver iothread %d: the domain has no such iothread; add it to <iothreads>", where, c.Driver.IOThread)
				}
			}
		}
		switch c.Type {
		case "usb":
			if !contains([]string{"", "qemu-xhci", "nec-xhci", "ich9-ehci1", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3", "piix3-uhci", "none"}, c.Model) {
				ck.refuseAtStart("%s: minivirt gives the guest qemu-xhci, nec-xhci, ich9-ehci1, ich9-uhci1-3 or piix3-uhci", where)
			}
			if u := c.USB; u != nil {
				ck.unsupported(where, unhandled(u, "Port", "Master"))
			}
		case "pci":
			if !contains([]string{"pcie-root", "pci-root", "pcie-root-port"}, c.Model) {
				ck.refuseAtStart("%s: minivirt gives the guest pcie-root, pci-root and pcie-root-port only; remove it to start the domain", where)
			}
			if p := c.PCI; p != nil {
				ck.unsupported(where, unhandled(p))
			}
		case "virtio-serial":
			if v := c.VirtIOSerial; v != nil {
				ck.unsupported(where, unhandled(v))
			}
		case "sata", "ide", "fdc":
			if c.Index != nil && *c.Index != 0 {
				ck.refuseAtStart("%s index %d: minivirt uses the machine's own controller; remove it to start the domain", where, *c.Index)
			}
		case "scsi":
			if !contains(append([]string{""}, scsiModels...), c.Model) {
				ck.refuseAtStart("%s: minivirt gives the guest virtio-scsi or lsilogic; change the model to start the domain", where)
			}
		case "ccid", "xenbus", "isa", "nvme":
			ck.refuseAtStart("%s: minivirt has usb, pci, virtio-serial, scsi, sata, ide and fdc controllers; remove it to start the domain", where)
		default:
			return fmt.Errorf("controller type %q: not a libvirt controller type; use usb, pci, virtio-serial, scsi, sata, ide or fdc", c.Type)
		}
	}
	return nil
}

// SCSIController is the model of SCSI controller index, as QEMU names it
// (virtio-scsi-pci or lsi53c895a), and whether the domain has it.
func (d *Domain) SCSIController(index uint) (string, bool) {
	for _, c := range d.Devices.Controllers {
		if c.Type == "scsi" && zero(c.Index) == index {
			if c.Model == "virtio-scsi" {
				return "virtio-scsi-pci", true
			}
			return "lsi53c895a", true
		}
	}
	return "", false
}

// hasIOThread reports whether the domain has the iothread with this id.
func (d *Domain) hasIOThread(id uint) bool {
	for _, t := range d.IOThreadIDList() {
		if t == id {
			return true
		}
	}
	return false
}

// IOThreadIDList returns the ids of the domain's iothreads: those
// <iothreadids> names, and as libvirt does, as many more of the lowest
// free ids as <iothreads> counts beyond them.
func (d *Domain) IOThreadIDList() []uint {
	var out []uint
	used := map[uint]bool{}
	if d.IOThreadIDs != nil {
		for _, t := range d.IOThreadIDs.IOThreads {
			out = append(out, t.ID)
			used[t.ID] = true
		}
	}
	for id := uint(1); uint(len(out)) < d.IOThreads; id++ {
		if !used[id] {
			out = append(out, id)
		}
	}
	return out
}

func (ck *checker) validateOtherDevices() error {
	d := ck.d
	if b := d.Devices.MemBalloon; b != nil {
		if err := ck.unsupported("memballoon", unhandled(b, "Model", "Alias", "Address")); err != nil {
			return err
		}
		if err := ck.checkPCIAddress("memballoon", b.Address); err != nil {
			return err
		}
		if b.Model != "virtio" && b.Model != "none" {
			ck.refuseAtStart("memballoon model %q: minivirt gives the guest virtio; change it to start the domain", b.Model)
		}
	}
	for _, r := range d.Devices.RNGs {
		if err := ck.unsupported("rng", unhandled(&r, "Model", "Backend", "Rate", "Alias", "Address")); err != nil {
			return err
		}
		if err := ck.checkPCIAddress("rng", r.Address); err != nil {
			return err
		}
		if r.Model != "virtio" {
			ck.refuseAtStart("rng model %q: minivirt gives the guest virtio; change it to start the domain", r.Model)
			continue
		}
		if r.Backend == nil || r.Backend.Random == nil && r.Backend.BuiltIn == nil {
			ck.refuseAtStart("rng backend: minivirt feeds the guest from a host device (random) or QEMU (builtin); change it to start the domain")
			continue
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
		if err := ck.unsupported(where, unhandled(&v, "Model", "Alias", "Address")); err != nil {
			return err
		}
		if err := ck.checkPCIAddress(where, v.Address); err != nil {
			return err
		}
		if err := ck.unsupported(where+" model", unhandled(&v.Model, "Type", "Heads", "Primary", "VRam", "Ram", "VGAMem")); err != nil {
			return err
		}
		if !contains(videoModels, v.Model.Type) {
			ck.refuseAtStart("%s model type %q: minivirt gives the guest %s; change it to start the domain", where, v.Model.Type, strings.Join(videoModels, ", "))
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
		if err := ck.unsupported(where, unhandled(&in, handled...)); err != nil {
			return err
		}
		if !contains([]string{"mouse", "keyboard", "tablet"}, in.Type) {
			ck.refuseAtStart("%s type %q: minivirt passes no host input device through; remove it to start the domain", where, in.Type)
			continue
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
		if err := ck.unsupported(where, unhandled(&snd, "Model", "Codec", "Alias", "Address")); err != nil {
			return err
		}
		if err := ck.checkPCIAddress(where, snd.Address); err != nil {
			return err
		}
		if !contains([]string{"ich6", "ich9", "ac97", "es1370"}, snd.Model) {
			ck.refuseAtStart("%s model %q: minivirt gives the guest ich6, ich9, ac97 or es1370; change it to start the domain", where, snd.Model)
		}
		for _, c := range snd.Codec {
			if err := oneOf(where+" codec type", c.Type, []string{"duplex", "micro", "output"}); err != nil {
				return err
			}
		}
	}
	for _, p := range d.Devices.Panics {
		if err := ck.unsupported("panic", unhandled(&p, "Model", "Alias")); err != nil {
			return err
		}
		if p.Model != "" && p.Model != "isa" && p.Model != "pvpanic" {
			ck.refuseAtStart("panic model %q: minivirt gives the guest isa or pvpanic; change it to start the domain", p.Model)
		}
	}
	if len(d.Devices.Panics) > 1 {
		ck.refuseAtStart("panic: given %d times; minivirt gives the guest one: keep one to start the domain", len(d.Devices.Panics))
	}
	return ck.validateWatchdogs()
}

// WatchdogModels are the watchdogs minivirt gives an x86 guest, by
// libvirt's name; itco is the q35 machine's own.
var watchdogModels = []string{"i6300esb", "ib700", "itco"}

// watchdogActions maps libvirt's watchdog actions to QEMU's -action
// watchdog=.
var watchdogActions = map[string]string{"reset": "reset", "shutdown": "shutdown", "poweroff": "poweroff",
	"pause": "pause", "none": "none", "inject-nmi": "inject-nmi"}

func (ck *checker) validateWatchdogs() error {
	d := ck.d
	for i, w := range d.Devices.Watchdogs {
		where := fmt.Sprintf("watchdog %d model %s", i, w.Model)
		ck.unsupported(where, unhandled(&w, "Model", "Action", "Alias", "Address"))
		if !contains(watchdogModels, w.Model) {
			ck.refuseAtStart("%s: an x86 guest has i6300esb, ib700 or itco; change it to start the domain", where)
			continue
		}
		if w.Model == "itco" && !d.q35() {
			ck.refuseAtStart("%s: itco is the q35 machine's; use i6300esb or ib700 on %s", where, d.OS.Type.Machine)
		}
		if w.Model == "i6300esb" {
			if err := ck.checkPCIAddress(where, w.Address); err != nil {
				return err
			}
		} else if w.Address != nil {
			ck.unsupported(where, []string{"<address>"})
		}
		if _, ok := watchdogActions[w.Action]; !ok && w.Action != "" {
			if w.Action == "dump" {
				ck.refuseAtStart("%s action dump: minivirt writes no core dumps; use pause, then `minivirt qmp` dump-guest-memory", where)
				continue
			}
			return fmt.Errorf("%s action %q: must be reset, shutdown, poweroff, pause, none, inject-nmi or dump", where, w.Action)
		}
		if i > 0 && w.Action != d.Devices.Watchdogs[0].Action {
			ck.refuseAtStart("%s action %s: QEMU takes one watchdog action for all; make them the same", where, w.Action)
		}
	}
	return nil
}

// WatchdogAction is QEMU's action when a watchdog fires, or "" when the
// domain has none: libvirt's default is reset.
func (d *Domain) WatchdogAction() string {
	if len(d.Devices.Watchdogs) == 0 {
		return ""
	}
	a := d.Devices.Watchdogs[0].Action
	if a == "" {
		a = "reset"
	}
	return watchdogActions[a]
}

// reservedOptions are QEMU options minivirt passes itself: a
// <qemu:commandline> that passes one too would collide with them.
var reservedOptions = []string{
	"-name", "-uuid", "-machine", "-M", "-accel", "-enable-kvm", "-cpu", "-m", "-smp", "-nodefaults",
	"-no-user-config", "-display", "-nographic", "-S", "-no-shutdown", "-action", "-sandbox", "-mon", "-qmp",
	"-monitor", "-serial", "-kernel", "-initrd", "-append", "-daemonize", "-pidfile", "-runas", "-chroot",
	"-no-reboot", "-boot", "-rtc", "-bios", "-drive", "-blockdev",
}

func (ck *checker) validateCommandline() error {
	d := ck.d
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
