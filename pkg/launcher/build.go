// Package launcher turns a domain into a QEMU command line: Build is a pure
// function, and its Plan says what must exist before QEMU runs (the
// sockets QEMU inherits, its network's socket, the NVRAM copy) and what
// QEMU will do that the supervisor must allow for (spawn the vmchannel
// helper, exit on the guest's power-off). pkg/supervisor carries it out.
package launcher

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"libvirt.org/go/libvirtxml"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/rundir"
)

// Env is what Build needs to know of the host.
type Env struct {
	QEMU      string // emulator used when the domain names none
	Self      string // the minivirt binary, run by QEMU as the vmchannel helper
	RunDir    string // this domain's runtime directory
	LogDir    string // where NAME.log (serial console) lives
	KVM       bool   // KVM is usable on this host
	KVMReason string // why not, when it is not
	// NVRAM is where this domain's UEFI variable store lives when the
	// domain names none (in the state directory, kept across starts).
	NVRAM string
	// OVMFCode and OVMFVars are the UEFI firmware and its variable-store
	// template when the domain names none (Debian's ovmf).
	OVMFCode, OVMFVars string
	// RunAs, when set, is the unprivileged identity QEMU becomes once it
	// has initialised (-runas UID:GID): it opens every file it needs
	// first. RunAsUID and RunAsGID are the same numbers.
	RunAs              string
	RunAsUID, RunAsGID int
	// Chroot, when set, is the empty directory QEMU is confined to once it
	// has initialised (-chroot).
	Chroot string
	// Incoming starts QEMU waiting for a saved guest's state
	// (-incoming defer), which the supervisor hands it by descriptor
	// (migrate-incoming): QEMU opens no file for it.
	Incoming bool
}

// Default UEFI firmware, from Debian's ovmf package.
const (
	DefaultOVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	DefaultOVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// Socket is a listening Unix socket the supervisor creates before QEMU starts
// and hands to QEMU as an inherited descriptor.
type Socket struct {
	Path string
	FD   int // the descriptor number QEMU sees
}

// Plan is a QEMU command line and what must exist before it runs.
type Plan struct {
	Argv    []string
	Sockets []Socket // listening sockets QEMU inherits, each at its FD
	// NetFD, when not 0, is where QEMU expects its end of the stream socket
	// of minivirt's own network (Network "netstack").
	NetFD   int
	Network string // domain.NetworkSlirp or domain.NetworkNetstack; "" without vmchannels or a NIC
	// NetBackend is how QEMU's NIC reaches netstack; NetFallback says why
	// it is the stream backend when vhost-user could not be used.
	NetBackend  domain.NetBackend
	NetFallback string
	Paths       rundir.Paths
	Accel       string // "kvm" or "tcg"
	// Env is added to QEMU's environment (<qemu:commandline> env).
	Env []string
	// NVRAM, when Path is set, is the UEFI variable store QEMU opens: the
	// supervisor copies Template there when it does not exist yet.
	NVRAM struct{ Path, Template string }
	// VirtioPorts are the virtio-serial ports with their socket paths,
	// the ones minivirt picked included.
	VirtioPorts []domain.VirtioPort
	// ExitsOnPoweroff is set when QEMU exits by itself once the guest
	// powers off (on_poweroff destroy): no -no-shutdown, so a guest that
	// powers off while its supervisor is gone leaves no QEMU behind. The
	// supervisor holds QEMU (QMP set-action) for a reboot it asks for.
	ExitsOnPoweroff bool
	// SpawnsHelper is set when QEMU runs minivirt's helper for each guest
	// connection (vmchannels on QEMU's user network): the helper must be
	// able to reach the relay socket as the user QEMU runs as.
	SpawnsHelper bool
	// VirtioFS are the virtiofs shares, each served by a virtiofsd the
	// supervisor runs beside QEMU.
	VirtioFS []VirtioFS
	// BalloonKiB, when not 0, is the balloon's target the supervisor sets
	// before the guest runs (<currentMemory> below <memory>).
	BalloonKiB uint
	// OpenTrays are the removable drives (by device id) whose tray the
	// supervisor opens before the guest runs (<target tray='open'>).
	OpenTrays []string
	Warnings  []string
}

// HasSocket says whether QEMU inherits a listening socket at path.
func (p Plan) HasSocket(path string) bool {
	for _, s := range p.Sockets {
		if s.Path == path {
			return true
		}
	}
	return false
}

// Files returns the descriptors QEMU inherits in exec.Cmd.ExtraFiles order:
// the file for descriptor FirstFD+i at index i. open makes a socket's file;
// ends are QEMU's ends of its socket pairs, by descriptor (NetFD).
func (p Plan) Files(open func(Socket) (*os.File, error), ends map[int]*os.File) ([]*os.File, error) {
	files := make([]*os.File, len(p.Sockets)+len(ends))
	for _, s := range p.Sockets {
		f, err := open(s)
		if err != nil {
			for _, f := range files {
				if f != nil {
					f.Close()
				}
			}
			return nil, err
		}
		files[s.FD-FirstFD] = f
	}
	for fd, f := range ends {
		files[fd-FirstFD] = f
	}
	return files, nil
}

// FirstFD is the descriptor number of the first inherited socket
// (exec.Cmd.ExtraFiles starts at 3).
const FirstFD = 3

// HelperCommand is the hidden minivirt subcommand QEMU runs for each guest
// connection of a vmchannel.
const HelperCommand = "__vmchannel-helper"

// maxGuestfwdRule is the longest guestfwd rule QEMU keeps; longer ones are
// cut silently, so Build refuses them.
const maxGuestfwdRule = 1023

// Build returns the QEMU command line for a validated domain. It has no side
// effects: the supervisor creates Plan.Sockets and runs Plan.Argv.
func Build(d *domain.Domain, env Env) (Plan, error) {
	p := Plan{Paths: rundir.PathsIn(env.RunDir)}
	for _, s := range []string{p.Paths.QMP, p.Paths.Console, p.Paths.QEMUConsole, p.Paths.Control, p.Paths.Relay, p.Paths.Net} {
		if len(s) > domain.MaxSocketPath {
			return Plan{}, fmt.Errorf("runtime directory %s: socket path %s is %d bytes, over the %d a Unix socket allows; use a shorter --run-dir", env.RunDir, s, len(s), domain.MaxSocketPath)
		}
	}
	b := &builder{d: d, env: env, p: &p, fd: FirstFD}
	for _, step := range []func() error{b.machine, b.memory, b.cpu, b.platform, b.firmware, b.boot, b.consoles, b.controllers,
		b.storageControllers, b.disks, b.network, b.channels, b.filesystems, b.devices, b.commandline} {
		if err := step(); err != nil {
			return Plan{}, err
		}
	}
	p.Argv = b.a
	p.SpawnsHelper = b.Spawns()
	return p, nil
}

// builder collects one command line.
type builder struct {
	d   *domain.Domain
	env Env
	p   *Plan
	a   []string
	fd  int
	// virtioSerial is set once the virtio-serial bus exists.
	virtioSerial bool
	ahci         string // the AHCI controller's id on a pc machine, once added
	usb          bool   // a USB bus minivirt added exists
}

func (b *builder) add(args ...string) { b.a = append(b.a, args...) }

// inherit registers a listening socket QEMU gets at the next descriptor.
func (b *builder) inherit(path string) int {
	b.p.Sockets = append(b.p.Sockets, Socket{Path: path, FD: b.fd})
	b.fd++
	return b.fd - 1
}

// DriveID is QEMU's id of the drive of the disk with target dev: what
// QMP's block commands name it by.
func DriveID(dev string) string { return "drive-" + dev }

// pairEnd allocates the descriptor of QEMU's end of a socket pair whose
// other end the supervisor keeps.
func (b *builder) pairEnd() int {
	b.fd++
	return b.fd - 1
}

// q35 tells the machine family: q35 (PCIe, AHCI, ICH9) or pc (i440fx, PIIX).
func (b *builder) q35() bool {
	m := b.d.OS.Type.Machine
	return m == "" || strings.Contains(m, "q35")
}

func (b *builder) machine() error {
	d, p := b.d, b.p
	qemu := d.Devices.Emulator
	if qemu == "" {
		qemu = b.env.QEMU
	}
	p.Accel = "tcg"
	if d.Type == "kvm" {
		if b.env.KVM {
			p.Accel = "kvm"
		} else {
			p.Warnings = append(p.Warnings, "KVM is not usable on this host ("+b.env.KVMReason+"); running under TCG, which is much slower")
		}
	}
	machine := d.OS.Type.Machine
	if machine == "" {
		machine = "q35"
	}
	if f := d.Features; f != nil {
		if f.VMPort != nil && f.VMPort.State != "" {
			machine += ",vmport=" + f.VMPort.State
		}
		if f.SMM != nil && f.SMM.State != "" {
			machine += ",smm=" + f.SMM.State
		}
	}
	if c := d.Memory.DumpCore; c != "" {
		machine += ",dump-guest-core=" + c
	}
	machine += memoryMachineOptions(d)
	if c := d.Clock; c != nil {
		for _, t := range c.Timer {
			if t.Name == "hpet" && t.Present != "" {
				machine += ",hpet=" + map[string]string{"yes": "on", "no": "off"}[t.Present]
			}
		}
	}
	b.add(qemu,
		"-name", "guest="+escapeOpt(d.Name)+",debug-threads=on",
		"-uuid", d.UUID,
		"-machine", machine,
		"-accel", p.Accel,
		"-nodefaults", "-no-user-config", "-display", "none",
		"-pidfile", p.Paths.PIDFile,
		"-S",
		// The supervisor applies on_crash: QEMU only stops the guest.
		"-action", "panic=pause",
	)
	if b.env.Incoming {
		b.add("-incoming", "defer")
	}
	p.ExitsOnPoweroff = d.OnPoweroff == "destroy" || d.OnPoweroff == ""
	if !p.ExitsOnPoweroff {
		b.add("-no-shutdown") // the supervisor applies restart or preserve
	}
	switch {
	case !b.Spawns():
		// Nothing is ever spawned: the full set, less elevateprivileges
		// when QEMU drops to another user (-runas needs set*uid, which
		// the sandbox is installed before; once it has dropped, QEMU holds
		// no capability to take anything back).
		if b.env.RunAs != "" {
			b.add("-sandbox", "on,obsolete=deny,spawn=deny,resourcecontrol=deny")
		} else {
			b.add("-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
		}
	default:
		// spawn and elevateprivileges stay allowed: guestfwd's cmd: needs both.
		b.add("-sandbox", "on,obsolete=deny,resourcecontrol=deny")
	}
	if b.env.RunAs != "" {
		b.add("-runas", b.env.RunAs)
	}
	if b.env.Chroot != "" {
		b.add("-chroot", b.env.Chroot)
	}
	if d.OnReboot == "destroy" {
		b.add("-no-reboot") // a guest reboot becomes a SHUTDOWN
	}
	b.add("-chardev", fmt.Sprintf("socket,id=monitor,fd=%d,server=on,wait=off", b.inherit(p.Paths.QMP)),
		"-mon", "chardev=monitor,mode=control")
	if c := d.Clock; c != nil {
		rtc := "base=" + rtcBase(c.Offset, c.Start)
		for _, t := range c.Timer {
			switch {
			case t.Name == "rtc" && t.TickPolicy == "catchup":
				rtc += ",driftfix=slew"
			case t.Name == "pit" && t.TickPolicy != "" && p.Accel == "kvm":
				b.add("-global", "kvm-pit.lost_tick_policy="+map[string]string{"delay": "delay", "catchup": "delay", "discard": "discard"}[t.TickPolicy])
			}
		}
		b.add("-rtc", rtc)
	}
	if pm := d.PM; pm != nil {
		dev := "PIIX4_PM"
		if b.q35() {
			dev = "ICH9-LPC"
		}
		for _, s := range [...]struct {
			n   string
			pol *libvirtxml.DomainPMPolicy
		}{{"3", pm.SuspendToMem}, {"4", pm.SuspendToDisk}} {
			if s.pol != nil && s.pol.Enabled != "" {
				b.add("-global", fmt.Sprintf("%s.disable_s%s=%d", dev, s.n, map[string]int{"yes": 0, "no": 1}[s.pol.Enabled]))
			}
		}
	}
	return nil
}

func (b *builder) cpu() error {
	d, p := b.d, b.p
	model := "max"
	if p.Accel == "kvm" {
		model = "host"
	}
	smp := strconv.FormatUint(uint64(d.VCPU.Value), 10)
	if cur := d.VCPU.Current; cur != 0 {
		smp = fmt.Sprintf("%d,maxcpus=%d", cur, d.VCPU.Value)
	}
	if c := d.CPU; c != nil {
		switch {
		case c.Mode == "host-passthrough" && p.Accel != "kvm":
			p.Warnings = append(p.Warnings, "cpu mode host-passthrough: there is no host CPU to pass through under TCG; the guest gets QEMU's max model")
		case c.Mode == "custom" || c.Mode == "" && c.Model != nil:
			model = c.Model.Value
		}
		for _, f := range c.Features {
			switch f.Policy {
			case "disable", "forbid":
				model += ",-" + f.Name
			default:
				model += ",+" + f.Name
			}
		}
		if t := c.Topology; t != nil {
			for _, part := range [...]struct {
				name string
				n    int
			}{{"sockets", t.Sockets}, {"dies", t.Dies}, {"cores", t.Cores}, {"threads", t.Threads}} {
				if part.n > 0 {
					smp += fmt.Sprintf(",%s=%d", part.name, part.n)
				}
			}
		}
	}
	if c := d.Clock; c != nil && p.Accel == "kvm" {
		for _, t := range c.Timer {
			if t.Name == "kvmclock" && t.Present == "no" {
				model += ",-kvmclock"
			}
		}
	}
	b.add("-cpu", model, "-smp", smp)
	return nil
}

// firmware sets up UEFI (OVMF as pflash, with the domain's own variable
// store) or a ROM loader.
func (b *builder) firmware() error {
	os := b.d.OS
	if os.Loader != nil && os.Loader.Type == "rom" {
		b.add("-bios", os.Loader.Path)
		return nil
	}
	if os.Firmware != "efi" && os.Loader == nil {
		return nil
	}
	code := b.env.OVMFCode
	if os.Loader != nil && os.Loader.Path != "" {
		code = os.Loader.Path
	}
	nv := b.env.NVRAM
	template := b.env.OVMFVars
	if n := os.NVRam; n != nil {
		if n.NVRam != "" {
			nv = n.NVRam
		}
		if n.Template != "" {
			template = n.Template
		}
	}
	if code == "" || nv == "" {
		return fmt.Errorf("os firmware efi: no UEFI firmware known; install Debian's ovmf or give <loader>")
	}
	b.p.NVRAM.Path, b.p.NVRAM.Template = nv, template
	b.add("-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+escapeOpt(code),
		"-drive", "if=pflash,format=raw,unit=1,file="+escapeOpt(nv))
	return nil
}

func (b *builder) boot() error {
	os := b.d.OS
	if os.Kernel != "" {
		b.add("-kernel", os.Kernel)
		if os.Initrd != "" {
			b.add("-initrd", os.Initrd)
		}
		if os.Cmdline != "" {
			b.add("-append", os.Cmdline)
		}
	}
	var opts []string
	if len(os.BootDevices) > 0 {
		order := ""
		for _, dev := range os.BootDevices {
			order += map[string]string{"hd": "c", "cdrom": "d", "network": "n", "fd": "a"}[dev.Dev]
		}
		opts = append(opts, "order="+order)
	}
	if os.BootMenu != nil && os.BootMenu.Enable != "" {
		opts = append(opts, "menu="+map[string]string{"yes": "on", "no": "off"}[os.BootMenu.Enable])
	}
	if len(opts) > 0 {
		b.add("-boot", strings.Join(opts, ","))
	}
	return nil
}

// chardev writes a character device: the primary console is minivirt's
// console socket with the console log; others follow their <source>.
func (b *builder) chardev(id string, src *libvirtxml.DomainChardevSource, log *libvirtxml.DomainChardevLog, primary, telnet bool) (string, error) {
	var s string
	switch {
	case primary && (src == nil || src.Pty != nil):
		if log != nil {
			return "", fmt.Errorf("console log file %s: minivirt logs the first console to %s; remove <log>", log.File, filepath.Join(b.env.LogDir, b.d.Name+".log"))
		}
		// QEMU writes the log itself, whoever is attached. Its one client
		// is the supervisor, which shares the console at Paths.Console;
		// should the supervisor die, the socket takes another.
		return fmt.Sprintf("socket,id=%s,fd=%d,server=on,wait=off,logfile=%s,logappend=on",
			id, b.inherit(b.p.Paths.QEMUConsole), escapeOpt(filepath.Join(b.env.LogDir, b.d.Name+".log"))), nil
	case src == nil || src.Pty != nil:
		s = "pty,id=" + id
	case src.Null != nil:
		s = "null,id=" + id
	case src.File != nil:
		s = "file,id=" + id + ",path=" + escapeOpt(src.File.Path)
		if src.File.Append != "" {
			s += ",append=" + src.File.Append
		}
	case src.UNIX != nil:
		s = "socket,id=" + id + ",path=" + escapeOpt(src.UNIX.Path) + serverOrClient(src.UNIX.Mode, src.UNIX.Reconnect)
	case src.TCP != nil:
		t := src.TCP
		s = "socket,id=" + id + ",host=" + orLocalhost(t.Host) + ",port=" + t.Service + serverOrClient(t.Mode, t.Reconnect)
		if telnet {
			s += ",telnet=on"
		}
	case src.UDP != nil:
		u := src.UDP
		s = "udp,id=" + id + ",host=" + orLocalhost(u.ConnectHost) + ",port=" + u.ConnectService
		if u.BindHost != "" {
			s += ",localaddr=" + u.BindHost
		}
		if u.BindService != "" {
			s += ",localport=" + u.BindService
		}
	case src.Dev != nil:
		s = "tty,id=" + id + ",path=" + escapeOpt(src.Dev.Path)
	}
	if log != nil {
		s += ",logfile=" + escapeOpt(log.File)
		if log.Append != "" {
			s += ",logappend=" + log.Append
		}
	}
	return s, nil
}

// consoles gives the guest its serial ports and virtio consoles. As in
// libvirt, a first <console> of target type serial is the first serial
// port; a domain with neither gets one serial port, minivirt's console.
func (b *builder) consoles() error {
	d := b.d
	type port struct {
		src    *libvirtxml.DomainChardevSource
		log    *libvirtxml.DomainChardevLog
		kind   string // the serial port's target type
		telnet bool
	}
	var serials, virtio []port
	for _, s := range d.Devices.Serials {
		p := port{src: s.Source, log: s.Log, telnet: s.Protocol != nil && s.Protocol.Type == "telnet"}
		if s.Target != nil {
			p.kind = s.Target.Type
		}
		serials = append(serials, p)
	}
	for i, c := range d.Devices.Consoles {
		switch {
		case c.Target != nil && c.Target.Type == "virtio":
			virtio = append(virtio, port{src: c.Source, log: c.Log})
		case i == 0 && len(serials) == 0:
			serials = append(serials, port{src: c.Source, log: c.Log})
		}
	}
	if len(serials) == 0 && len(d.Devices.Consoles) == 0 {
		serials = append(serials, port{})
	}
	// The primary console: the first <console> when it is virtio, else
	// the first serial port.
	virtioFirst := len(d.Devices.Consoles) > 0 && d.Devices.Consoles[0].Target != nil && d.Devices.Consoles[0].Target.Type == "virtio"
	isa := 0
	for i, s := range serials {
		id := fmt.Sprintf("serial%d", i)
		dev, err := b.chardev(id, s.src, s.log, i == 0 && !virtioFirst, s.telnet)
		if err != nil {
			return err
		}
		switch s.kind {
		case "pci-serial":
			b.add("-chardev", dev, "-device", fmt.Sprintf("pci-serial,chardev=%s,id=%s", id, id))
		case "isa-debug":
			b.add("-chardev", dev, "-device", fmt.Sprintf("isa-debugcon,iobase=0x402,chardev=%s,id=%s", id, id))
		default:
			b.add("-chardev", dev, "-device", fmt.Sprintf("isa-serial,chardev=%s,index=%d", id, isa))
			isa++
		}
	}
	for i, c := range virtio {
		id := fmt.Sprintf("console%d", i)
		dev, err := b.chardev(id, c.src, c.log, i == 0 && virtioFirst, false)
		if err != nil {
			return err
		}
		b.virtioSerialBus()
		b.add("-chardev", dev, "-device", fmt.Sprintf("virtconsole,bus=virtio-serial0.0,chardev=%s,id=%s", id, id))
	}
	return nil
}

// virtioPort is the virtio-serial port a channel's address names, or 0.
func virtioPort(ch libvirtxml.DomainChannel) uint {
	if a := ch.Address; a != nil && a.VirtioSerial != nil && a.VirtioSerial.Port != nil {
		return *a.VirtioSerial.Port
	}
	return 0
}

// serverOrClient is a socket chardev's options: a server that does not
// wait for its client (mode bind), or a client, reconnecting as <reconnect>
// says.
func serverOrClient(mode string, r *libvirtxml.DomainChardevSourceReconnect) string {
	if mode == "bind" {
		return ",server=on,wait=off"
	}
	if r == nil || r.Enabled != "yes" {
		return ""
	}
	t := uint(1)
	if r.Timeout != nil {
		t = *r.Timeout
	}
	return fmt.Sprintf(",reconnect=%d", t)
}

// orLocalhost is a chardev's host, localhost when the source names none.
func orLocalhost(host string) string {
	if host == "" {
		return "localhost"
	}
	return host
}

func (b *builder) virtioSerialBus() {
	if !b.virtioSerial {
		b.virtioSerial = true
		b.add("-device", "virtio-serial-pci,id=virtio-serial0")
	}
}

// usbBus makes sure the guest has a USB bus: its own controller, or one
// minivirt adds, as libvirt does, for a USB device.
func (b *builder) usbBus() {
	if !b.usb && !b.hasUSB() {
		b.add("-device", "qemu-xhci,id=usb-input")
	}
	b.usb = true
}

// hasUSB reports whether the domain has a USB controller of its own.
func (b *builder) hasUSB() bool {
	for _, c := range b.d.Devices.Controllers {
		if c.Type == "usb" && c.Model != "none" {
			return true
		}
	}
	return false
}

func (b *builder) hasBootOrder() bool {
	for _, disk := range b.d.Devices.Disks {
		if disk.Boot != nil {
			return true
		}
	}
	for _, nic := range b.d.Devices.Interfaces {
		if nic.Boot != nil {
			return true
		}
	}
	return false
}

// Spawns reports whether QEMU will spawn processes: minivirt's helper, once
// per guest connection, for vmchannels on QEMU's user network.
func (b *builder) Spawns() bool { return !b.netstack() && len(b.d.VMChannels()) > 0 }

// NeedsFilesystem reports whether QEMU needs the host's filesystem after it
// has started, so that it cannot be confined to an empty directory: it
// spawns minivirt's helper (vmchannels on QEMU's user network), runs
// options minivirt did not write (<qemu:commandline>), or serves a 9p share
// (QEMU's 9p sets a new file's mode through /proc/self/fd).
func NeedsFilesystem(d *domain.Domain) bool {
	b := &builder{d: d}
	if b.Spawns() || d.QEMUCommandline != nil {
		return true
	}
	for _, s := range d.Shares() {
		if s.Driver == "path" {
			return true
		}
	}
	return false
}

// netstack reports whether minivirt's own network carries the domain's
// vmchannels.
func (b *builder) netstack() bool {
	d := b.d
	return d.Network() == domain.NetworkNetstack && (d.NeedsNetwork() || d.Ext.Network != "")
}

func (b *builder) network() error {
	d, p := b.d, b.p
	if b.netstack() {
		p.Network = domain.NetworkNetstack
		p.NetBackend, p.NetFallback = d.NetBackend()
		if p.NetBackend == domain.BackendVhostUser {
			// QEMU 7.2 passes descriptors only over a socket it opened by
			// path (chardev/char-socket.c), so it connects to the
			// supervisor's, in the runtime directory, as it starts; the
			// guest's RAM is a shared memfd (domain.Backing).
			dev := fmt.Sprintf("virtio-net-pci,netdev=net0,host_mtu=%d", d.NetstackMTU())
			if p.Accel == "tcg" {
				// QEMU 7.2 under TCG (no irqfd) crashes in
				// msix_set_vector_notifiers as a vhost-user NIC with
				// MSI-X starts; without vectors the device interrupts
				// through INTx, raised by QEMU from the back-end's call
				// eventfd. Under KVM it keeps MSI-X.
				dev += ",vectors=0"
			}
			b.add("-chardev", "socket,id=charnet0,path="+escapeOpt(p.Paths.Net),
				"-netdev", "vhost-user,id=net0,chardev=charnet0", "-device", dev)
			return nil
		}
		p.NetFD = b.pairEnd()
		b.add("-netdev", fmt.Sprintf("stream,id=net0,server=off,addr.type=fd,addr.str=%d", p.NetFD),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=net0,host_mtu=%d", d.NetstackMTU()))
		return nil
	}
	nic, ok := d.UserNIC()
	if !ok {
		return nil
	}
	p.Network = domain.NetworkSlirp
	netdev := "user,id=net0"
	if nic.Isolated {
		netdev += ",restrict=on"
	}
	for _, vc := range d.VMChannels() {
		rule := GuestfwdRule(d, vc, b.env.Self, p.Paths.Relay)
		if len(rule) > maxGuestfwdRule {
			return fmt.Errorf("vmchannel port %d: the guestfwd rule is %d bytes, over the %d QEMU keeps; use shorter paths (the minivirt binary, --run-dir or the target)", vc.Port, len(rule), maxGuestfwdRule)
		}
		netdev += ",guestfwd=" + escapeOpt(rule)
	}
	for _, f := range d.Forwards() { // Unix-socket forwards need netstack: refused by Validate
		addr := f.Listen.Addr().String()
		if f.Listen.Addr().Is6() {
			addr = "[" + addr + "]"
		}
		netdev += fmt.Sprintf(",hostfwd=tcp:%s:%d-:%d", addr, f.Listen.Port(), f.GuestPort)
	}
	dev := map[string]string{"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139"}[nic.Model] + ",netdev=net0"
	if nic.MAC != "" {
		dev += ",mac=" + nic.MAC
	}
	if nic.Boot != 0 {
		dev += fmt.Sprintf(",bootindex=%d", nic.Boot)
	}
	b.add("-netdev", netdev, "-device", dev+nic.PCIAddr)
	return nil
}

// channels gives the guest its virtio-serial ports, numbered as their
// addresses say or in order: those whose sockets minivirt binds (inherited
// by descriptor), and those on any other character device.
func (b *builder) channels() error {
	bound := b.d.VirtioPorts()
	// The virtio consoles have the first ports (0 up); a channel has the
	// port its address names, else the next one free.
	consoles := uint(0)
	for _, c := range b.d.Devices.Consoles {
		if c.Target != nil && c.Target.Type == "virtio" {
			consoles++
		}
	}
	used := map[uint]bool{}
	for _, ch := range b.d.Devices.Channels {
		if p := virtioPort(ch); p != 0 {
			if p < consoles {
				return fmt.Errorf("channel virtio %s address port %d: a virtio console has it; give a port from %d", ch.Target.VirtIO.Name, p, consoles)
			}
			used[p] = true
		}
	}
	next := max(consoles, 1)
	for i, ch := range b.d.Devices.Channels {
		if ch.Target == nil || ch.Target.VirtIO == nil {
			continue
		}
		nr := virtioPort(ch)
		if nr == 0 {
			for used[next] {
				next++
			}
			nr = next
			used[nr] = true
		}
		id := fmt.Sprintf("channel%d", i)
		name := ch.Target.VirtIO.Name
		var dev string
		if ch.Source != nil && ch.Source.UNIX != nil && ch.Source.UNIX.Mode == "bind" {
			port := bound[0]
			bound = bound[1:]
			if port.Path == "" { // as libvirt does: a path of minivirt's choosing
				port.Path = filepath.Join(b.env.RunDir, "channel."+port.Name+".sock")
				if len(port.Path) > domain.MaxSocketPath {
					return fmt.Errorf("channel virtio %s: the socket minivirt would bind, %s, is %d bytes, over the %d a Unix socket allows; give <source path=''/>", port.Name, port.Path, len(port.Path), domain.MaxSocketPath)
				}
			}
			b.p.VirtioPorts = append(b.p.VirtioPorts, port)
			dev = fmt.Sprintf("socket,id=%s,fd=%d,server=on,wait=off", id, b.inherit(port.Path))
		} else {
			var err error
			if dev, err = b.chardev(id, ch.Source, ch.Log, false, false); err != nil {
				return err
			}
		}
		b.virtioSerialBus()
		b.add("-chardev", dev, "-device", fmt.Sprintf("virtserialport,bus=virtio-serial0.0,nr=%d,chardev=%s,name=%s", nr, id, name))
	}
	return nil
}

func (b *builder) controllers() error {
	usbMaster := ""
	rootPorts := 0
	for i, c := range b.d.Devices.Controllers {
		switch c.Type {
		case "usb":
			id := fmt.Sprintf("usb%d", i)
			model := c.Model
			if model == "" { // libvirt's default for the machine
				model = map[bool]string{true: "qemu-xhci", false: "piix3-uhci"}[b.q35()]
			}
			addr := domain.PCIAddr(c.Address)
			switch model {
			case "qemu-xhci", "nec-xhci":
				dev := map[string]string{"qemu-xhci": "qemu-xhci", "nec-xhci": "nec-usb-xhci"}[model] + ",id=" + id
				if c.USB != nil && c.USB.Port != nil {
					dev += fmt.Sprintf(",p2=%d,p3=%d", *c.USB.Port, *c.USB.Port)
				}
				b.add("-device", dev+addr)
			case "ich9-ehci1":
				usbMaster = id
				b.add("-device", "ich9-usb-ehci1,id="+id+addr)
			case "ich9-uhci1", "ich9-uhci2", "ich9-uhci3":
				dev := "ich9-usb-" + strings.TrimPrefix(model, "ich9-") + ",id=" + id
				if usbMaster != "" && c.USB != nil && c.USB.Master != nil {
					dev += fmt.Sprintf(",masterbus=%s.0,firstport=%d", usbMaster, c.USB.Master.StartPort)
				}
				b.add("-device", dev+addr)
			case "piix3-uhci":
				b.add("-device", "piix3-usb-uhci,id="+id+addr)
			}
		case "pci":
			switch c.Model {
			case "pcie-root-port":
				if !b.q35() {
					return fmt.Errorf("controller pci model pcie-root-port: needs a q35 machine")
				}
				rootPorts++
				b.add("-device", fmt.Sprintf("pcie-root-port,id=pci.%d,chassis=%d", rootPorts, rootPorts)+domain.PCIAddr(c.Address))
			case "pcie-root":
				if !b.q35() {
					return fmt.Errorf("controller pci model pcie-root: the pc machine has pci-root; use q35 or pci-root")
				}
			case "pci-root":
				if b.q35() {
					return fmt.Errorf("controller pci model pci-root: the q35 machine has pcie-root; use pc or pcie-root")
				}
			}
		case "virtio-serial":
			b.virtioSerialBus()
		}
	}
	return nil
}

func (b *builder) devices() error {
	d := b.d
	switch m := d.Devices.MemBalloon; {
	case m != nil && m.Model == "virtio":
		b.add("-device", "virtio-balloon-pci,id=balloon0"+domain.PCIAddr(m.Address))
	case m == nil && d.BalloonTarget() != 0:
		b.add("-device", "virtio-balloon-pci,id=balloon0") // as libvirt's default memballoon
	}
	b.p.BalloonKiB = d.BalloonTarget()
	for _, disk := range d.Devices.Disks {
		if disk.Target.Tray == "open" {
			b.p.OpenTrays = append(b.p.OpenTrays, disk.Target.Dev)
		}
	}
	for i, r := range d.Devices.RNGs {
		obj := fmt.Sprintf("rng-builtin,id=objrng%d", i)
		if r.Backend.Random != nil {
			obj = fmt.Sprintf("rng-random,id=objrng%d,filename=%s", i, r.Backend.Random.Device)
		}
		dev := fmt.Sprintf("virtio-rng-pci,rng=objrng%d,id=rng%d", i, i) + domain.PCIAddr(r.Address)
		if r.Rate != nil {
			period := r.Rate.Period
			if period == 0 {
				period = 1000
			}
			dev += fmt.Sprintf(",max-bytes=%d,period=%d", r.Rate.Bytes, period)
		}
		b.add("-object", obj, "-device", dev)
	}
	for i, v := range d.Devices.Videos {
		dev := map[string]string{"vga": "VGA", "cirrus": "cirrus-vga", "virtio": "virtio-vga", "qxl": "qxl-vga",
			"bochs": "bochs-display", "ramfb": "ramfb"}[v.Model.Type]
		if i > 0 && v.Model.Type == "virtio" {
			dev = "virtio-gpu-pci" // only the primary is a VGA device
		}
		if dev == "" {
			continue // model none
		}
		opts := fmt.Sprintf("%s,id=video%d", dev, i) + domain.PCIAddr(v.Address)
		if v.Model.VRam != 0 && (v.Model.Type == "vga" || v.Model.Type == "cirrus") {
			opts += fmt.Sprintf(",vgamem_mb=%d", max(v.Model.VRam/1024, 1))
		}
		b.add("-device", opts)
	}
	for _, in := range d.Devices.Inputs {
		switch in.Bus {
		case "usb":
			b.usbBus()
			b.add("-device", map[string]string{"mouse": "usb-mouse", "keyboard": "usb-kbd", "tablet": "usb-tablet"}[in.Type])
		case "virtio":
			b.add("-device", map[string]string{"mouse": "virtio-mouse-pci", "keyboard": "virtio-keyboard-pci", "tablet": "virtio-tablet-pci"}[in.Type])
		}
		// PS/2 mouse and keyboard are part of every x86 machine.
	}
	for i, snd := range d.Devices.Sounds {
		audio := fmt.Sprintf("snd%d", i)
		b.add("-audiodev", "none,id="+audio)
		switch snd.Model {
		case "ich6", "ich9":
			b.add("-device", map[string]string{"ich6": "intel-hda", "ich9": "ich9-intel-hda"}[snd.Model]+fmt.Sprintf(",id=sound%d", i)+domain.PCIAddr(snd.Address))
			codecs := snd.Codec
			if len(codecs) == 0 {
				codecs = []libvirtxml.DomainSoundCodec{{Type: "duplex"}}
			}
			for _, c := range codecs {
				b.add("-device", fmt.Sprintf("hda-%s,bus=sound%d.0,audiodev=%s", c.Type, i, audio))
			}
		case "ac97":
			b.add("-device", "AC97,audiodev="+audio+domain.PCIAddr(snd.Address))
		case "es1370":
			b.add("-device", "ES1370,audiodev="+audio+domain.PCIAddr(snd.Address))
		}
	}
	pvpanic := "pvpanic-pci" // the supervisor needs GUEST_PANICKED for on_crash
	if len(d.Devices.Panics) > 0 && d.Devices.Panics[0].Model == "isa" {
		pvpanic = "pvpanic"
	}
	b.add("-device", pvpanic)
	return nil
}

// commandline passes <qemu:commandline> through, last, as libvirt does.
func (b *builder) commandline() error {
	c := b.d.QEMUCommandline
	if c == nil {
		return nil
	}
	for _, a := range c.Args {
		b.add(a.Value)
	}
	for _, e := range c.Envs {
		b.p.Env = append(b.p.Env, e.Name+"="+e.Value)
	}
	return nil
}

// GuestfwdRule is the guestfwd rule of one vmchannel, before QEMU's option
// escaping: QEMU runs the helper once per guest connection. libslirp splits
// the command with g_shell_parse_argv, so every word is single-quoted. The
// target and the PROXY settings are there for the helper's fallback.
func GuestfwdRule(d *domain.Domain, vc domain.VMChannel, self, relay string) string {
	words := []string{self, HelperCommand, relay, fmt.Sprintf("%s:%d", vc.Address, vc.Port), vc.Path}
	if vc.Proxy != "" {
		words = append(words, "--proxy="+vc.Proxy, "--name="+d.Name, "--uuid="+d.UUID)
	}
	for i, w := range words {
		words[i] = shellQuote(w)
	}
	return fmt.Sprintf("tcp:%s:%d-cmd:%s", vc.Address, vc.Port, strings.Join(words, " "))
}

// shellQuote quotes s for g_shell_parse_argv: inside single quotes nothing is
// special, and a single quote is written as quote, backslash, quote, quote.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// escapeOpt escapes a value inside a QEMU option string: commas are doubled.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }
