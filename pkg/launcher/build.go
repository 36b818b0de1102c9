// Package launcher turns a domain into a QEMU command line (Build, a pure
// function), and runs the per-domain supervisor that creates the host
// sockets, starts QEMU and follows it (Supervise).
package launcher

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/usernet"
)

// Env is what Build needs to know of the host.
type Env struct {
	QEMU      string // emulator used when the domain names none
	Self      string // the minivirt binary, run by QEMU as the vmchannel helper
	RunDir    string // this domain's runtime directory
	LogDir    string // where NAME.log (serial console) lives
	KVM       bool   // KVM is usable on this host
	KVMReason string // why not, when it is not
}

// Socket is a listening Unix socket the supervisor creates before QEMU starts
// and hands to QEMU as an inherited descriptor.
type Socket struct {
	Path string
	FD   int // the descriptor number QEMU sees
}

// Paths are the supervisor's sockets in the runtime directory.
type Paths struct {
	QMP, Console, Control, Relay string
}

// Plan is a QEMU command line and what must exist before it runs.
type Plan struct {
	Argv    []string
	Sockets []Socket // listening sockets QEMU inherits, each at its FD
	// NetFD, when not 0, is where QEMU expects its end of the stream socket
	// of minivirt's own network (Network "netstack").
	NetFD    int
	Network  string // domain.NetworkSlirp or domain.NetworkNetstack; "" without vmchannels or a NIC
	Paths    Paths
	Accel    string // "kvm" or "tcg"
	Warnings []string
}

// Files returns the descriptors QEMU inherits in exec.Cmd.ExtraFiles order:
// the file for descriptor FirstFD+i at index i. open makes a socket's file;
// netEnd is QEMU's end of the network socket.
func (p Plan) Files(open func(Socket) (*os.File, error), netEnd *os.File) ([]*os.File, error) {
	n := len(p.Sockets)
	if p.NetFD != 0 {
		n++
	}
	files := make([]*os.File, n)
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
	if p.NetFD != 0 {
		files[p.NetFD-FirstFD] = netEnd
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

// PathsIn returns the supervisor's socket paths in a runtime directory.
func PathsIn(runDir string) Paths {
	return Paths{
		QMP:     filepath.Join(runDir, "qmp.sock"),
		Console: filepath.Join(runDir, "console.sock"),
		Control: filepath.Join(runDir, "control.sock"),
		Relay:   filepath.Join(runDir, "relay.sock"),
	}
}

// Build returns the QEMU command line for a validated domain. It has no side
// effects: the supervisor creates Plan.Sockets and runs Plan.Argv.
func Build(d *domain.Domain, env Env) (Plan, error) {
	p := Plan{Paths: PathsIn(env.RunDir)}
	for _, s := range []string{p.Paths.QMP, p.Paths.Console, p.Paths.Control, p.Paths.Relay} {
		if len(s) > domain.MaxSocketPath {
			return Plan{}, fmt.Errorf("runtime directory %s: socket path %s is %d bytes, over the %d a Unix socket allows; use a shorter --run-dir", env.RunDir, s, len(s), domain.MaxSocketPath)
		}
	}
	qemu := d.Devices.Emulator
	if qemu == "" {
		qemu = env.QEMU
	}
	p.Accel = "tcg"
	if d.Type == "kvm" {
		if env.KVM {
			p.Accel = "kvm"
		} else {
			p.Warnings = append(p.Warnings, "KVM is not usable on this host ("+env.KVMReason+"); running under TCG, which is much slower")
		}
	}
	cpu := "max"
	if p.Accel == "kvm" {
		cpu = "host"
	}
	machine := d.OS.Type.Machine
	if machine == "" {
		machine = "q35"
	}

	a := []string{qemu,
		"-name", "guest=" + d.Name + ",debug-threads=on",
		"-uuid", d.UUID,
		"-machine", machine,
		"-accel", p.Accel,
		"-cpu", cpu,
		"-m", strconv.FormatUint(d.Memory.MiB(), 10),
		"-smp", strconv.Itoa(d.VCPU.Count),
		"-nodefaults", "-no-user-config", "-display", "none",
		"-S", "-no-shutdown",
		// The supervisor applies on_crash: QEMU only stops the guest.
		"-action", "panic=pause",
	}
	// minivirt's own network carries the vmchannels (or was asked for).
	netstack := d.Network() == domain.NetworkNetstack && (len(d.VMChannels()) > 0 || d.Devices.VMChannels != nil)
	if !netstack && len(d.VMChannels()) > 0 {
		// spawn and elevateprivileges stay allowed: guestfwd's cmd: needs both.
		a = append(a, "-sandbox", "on,obsolete=deny,resourcecontrol=deny")
	} else {
		// Nothing is ever spawned: the full set.
		a = append(a, "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
	}
	if d.OnReboot == "destroy" {
		a = append(a, "-no-reboot") // a guest reboot becomes a SHUTDOWN
	}

	fd := FirstFD
	inherit := func(path string) int {
		p.Sockets = append(p.Sockets, Socket{Path: path, FD: fd})
		fd++
		return fd - 1
	}
	a = append(a,
		"-chardev", fmt.Sprintf("socket,id=monitor,fd=%d,server=on,wait=off", inherit(p.Paths.QMP)),
		"-mon", "chardev=monitor,mode=control",
		"-chardev", fmt.Sprintf("socket,id=serial0,fd=%d,server=on,wait=off,logfile=%s,logappend=on",
			inherit(p.Paths.Console), escapeOpt(filepath.Join(env.LogDir, d.Name+".log"))),
		"-serial", "chardev:serial0",
	)

	if d.OS.Kernel != "" {
		a = append(a, "-kernel", d.OS.Kernel)
		if d.OS.Initrd != "" {
			a = append(a, "-initrd", d.OS.Initrd)
		}
		if d.OS.Cmdline != "" {
			a = append(a, "-append", d.OS.Cmdline)
		}
	}

	ide := 0
	for i, disk := range d.Devices.Disks {
		id := "drive-" + disk.Target.Dev
		format := "raw"
		if disk.Driver != nil && disk.Driver.Type != "" {
			format = disk.Driver.Type
		}
		drive := fmt.Sprintf("file=%s,format=%s,if=none,id=%s", escapeOpt(disk.Source.File), format, id)
		if disk.ReadOnly != nil || disk.Device == "cdrom" {
			drive += ",readonly=on"
		}
		var dev string
		switch {
		case disk.Target.Bus == "virtio" || disk.Target.Bus == "" && strings.HasPrefix(disk.Target.Dev, "vd"):
			dev = "virtio-blk-pci,drive=" + id
		default: // ide and sata both sit on q35's AHCI controller
			kind := "ide-hd"
			if disk.Device == "cdrom" {
				kind = "ide-cd"
			}
			dev = fmt.Sprintf("%s,drive=%s,bus=ide.%d", kind, id, ide)
			ide++
		}
		if i == 0 && d.OS.Kernel == "" {
			dev += ",bootindex=1"
		}
		a = append(a, "-drive", drive, "-device", dev)
	}

	if netstack {
		p.Network, p.NetFD = domain.NetworkNetstack, fd
		fd++
		a = append(a, "-netdev", fmt.Sprintf("stream,id=net0,server=off,addr.type=fd,addr.str=%d", p.NetFD),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=net0,host_mtu=%d", usernet.MTU))
	} else if nic, ok := d.UserNIC(); ok {
		p.Network = domain.NetworkSlirp
		netdev := "user,id=net0"
		if nic.Isolated {
			netdev += ",restrict=on"
		}
		for _, vc := range d.VMChannels() {
			rule := GuestfwdRule(d, vc, env.Self, p.Paths.Relay)
			if len(rule) > maxGuestfwdRule {
				return Plan{}, fmt.Errorf("vmchannel port %d: the guestfwd rule is %d bytes, over the %d QEMU keeps; use shorter paths (the minivirt binary, --run-dir or the target)", vc.Port, len(rule), maxGuestfwdRule)
			}
			netdev += ",guestfwd=" + escapeOpt(rule)
		}
		dev := map[string]string{"virtio": "virtio-net-pci", "e1000": "e1000", "rtl8139": "rtl8139"}[nic.Model] + ",netdev=net0"
		if nic.MAC != "" {
			dev += ",mac=" + nic.MAC
		}
		a = append(a, "-netdev", netdev, "-device", dev)
	}

	if ports := d.VirtioPorts(); len(ports) > 0 {
		a = append(a, "-device", "virtio-serial-pci,id=virtio-serial0")
		for i, port := range ports {
			id := fmt.Sprintf("channel%d", i)
			a = append(a,
				"-chardev", fmt.Sprintf("socket,id=%s,fd=%d,server=on,wait=off", id, inherit(port.Path)),
				"-device", fmt.Sprintf("virtserialport,bus=virtio-serial0.0,nr=%d,chardev=%s,name=%s", i+1, id, port.Name))
		}
	}
	a = append(a, "-device", "pvpanic-pci")
	p.Argv = a
	return p, nil
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
