// Package rig boots small QEMU guests from Go tests and talks to them over
// vmchannels: describe a guest, listen on its vmchannels, start it, wait for
// console lines or connections, and let the test's cleanup tear it all down.
//
// A rig is minivirt itself, not a second launcher: it drives the same
// lifecycle engine (pkg/manager) as the command line, on a private bbolt
// store, and runs the same supervisor inside the test process. QEMU is tied to that process, so nothing outlives a test,
// even one that is killed. `minivirt status`, `log` and `console` work on a
// rig's domain given its state and run directories (VM.StateDir, VM.RunDir).
//
// The vmchannel helper that QEMU spawns per guest connection is the minivirt
// binary: set Guest.Minivirt, $MINIVIRT_BIN, or put minivirt on PATH.
package rig

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/manager"
	"github.com/minivirt/minivirt/pkg/store"
)

// Guest describes a guest booted from a kernel and an initramfs.
type Guest struct {
	Name      string // default: "rig-" and random hex
	Kernel    string // absolute path
	Initrd    string // absolute path, optional
	Cmdline   string // default "console=ttyS0"
	MemoryMiB int    // default 192
	VCPUs     int    // default 1
	// XML, when set, is a whole domain definition and the fields above
	// are ignored (vmchannels from Listen are added to it).
	XML string
	// Minivirt is the minivirt binary QEMU runs as the vmchannel helper.
	Minivirt string
}

// Builder collects a guest's definition and its vmchannels before it starts.
type Builder struct {
	guest     Guest
	uuid      string // when set, the domain's uuid (a restored rig guest keeps its save's)
	restore   string // when set, Start restores the guest from this save instead of booting
	dir       string // private directory: state, run, sockets
	channels  []domain.VMChannel
	listeners []net.Listener
	shares    []domain.Share
	err       error
}

// New begins a rig for g. Listen adds vmchannels; Start boots it.
func New(g Guest) *Builder {
	b := &Builder{guest: g}
	// Socket paths are limited to 107 bytes: t.TempDir() can be too long.
	b.dir, b.err = os.MkdirTemp("", "mvrig-")
	if b.err == nil {
		// Enter, not list: run as root, QEMU runs unprivileged, and on
		// QEMU's user network its helper reaches the relay socket here.
		b.err = os.Chmod(b.dir, 0o711)
	}
	return b
}

// Listen adds a vmchannel on 10.0.2.4:port and returns the host listener
// that accepts one connection for every guest connection to it. VM.Close
// closes it.
func (b *Builder) Listen(port uint16) (net.Listener, error) {
	if b.err != nil {
		return nil, b.err
	}
	path := filepath.Join(b.dir, fmt.Sprintf("vmchannel-%d.sock", port))
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	b.channels = append(b.channels, domain.VMChannel{Address: domain.DefaultVMChannelAddress, Port: port, Path: path})
	b.listeners = append(b.listeners, l)
	return l, nil
}

// Share shares the host directory dir with the guest, which mounts it by
// tag: by virtiofs when the test runs as root (QEMU's virtiofsd sandboxes
// itself in namespaces), else by 9p, which QEMU serves itself:
//
//	mount -t virtiofs TAG /mnt    # as root
//	mount -t 9p -o trans=virtio TAG /mnt
//
// The tiny guest's kernel (Debian's cloud kernel) has virtiofs and no 9p.
// A guest with a share cannot be saved (QEMU does not migrate either), so
// Share and Restore do not go together.
func (b *Builder) Share(tag, dir string) error {
	if b.err != nil {
		return b.err
	}
	if b.restore != "" {
		return errors.New("rig: a guest restored from a save cannot get a shared directory (QEMU does not save one)")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	driver := "path"
	if os.Geteuid() == 0 {
		driver = "virtiofs"
	}
	b.shares = append(b.shares, domain.Share{Driver: driver, Source: abs, Tag: tag, AccessMode: "passthrough"})
	return nil
}

func (b *Builder) domain() (*domain.Domain, error) {
	g := b.guest
	xml := g.XML
	if xml == "" {
		if g.Name == "" {
			var r [4]byte
			rand.Read(r[:])
			g.Name = "rig-" + hex.EncodeToString(r[:])
		}
		if g.Cmdline == "" {
			g.Cmdline = "console=ttyS0"
		}
		if g.MemoryMiB == 0 {
			g.MemoryMiB = 192
		}
		if g.VCPUs == 0 {
			g.VCPUs = 1
		}
		var initrd string
		if g.Initrd != "" {
			initrd = "<initrd>" + escape(g.Initrd) + "</initrd>"
		}
		xml = fmt.Sprintf(`<domain type='kvm'><name>%s</name><memory unit='MiB'>%d</memory><vcpu>%d</vcpu>
<os><kernel>%s</kernel>%s<cmdline>%s</cmdline></os><devices/></domain>`,
			escape(g.Name), g.MemoryMiB, g.VCPUs, escape(g.Kernel), initrd, escape(g.Cmdline))
	}
	d, err := domain.Parse(strings.NewReader(xml))
	if err != nil {
		return nil, err
	}
	if b.uuid != "" {
		d.UUID = b.uuid
	}
	for _, vc := range b.channels {
		if _, err := d.AddVMChannel(vc); err != nil {
			return nil, err
		}
	}
	for _, s := range b.shares {
		d.AddShare(s)
	}
	if _, user := d.UserNIC(); d.Ext.Network == "" && !user {
		// minivirt's own network, even without vmchannels yet: the test
		// may add them, or forwards (DialGuest), while the guest runs.
		d.Ext.Network = domain.NetworkNetstack
	}
	return d, d.Validate()
}

func escape(s string) string {
	var sb strings.Builder
	xml.EscapeText(&sb, []byte(s))
	return sb.String()
}

// VM is a running rig guest.
type VM struct {
	Name     string
	StateDir string // the private minivirt state directory
	RunDir   string // the private minivirt runtime directory
	Warnings []string

	mgr       *manager.Manager
	dir       string
	listeners []net.Listener
	logPath   string
	done      chan struct{} // closed once QEMU has exited and the supervisor returned
	closeOnce sync.Once
	closeErr  error

	t         testing.TB // set by Run
	forwardMu sync.Mutex
	forwards  map[uint16]bool // guest ports DialGuest forwards
}

// Start boots the guest and returns once its CPUs run. Close (or the test
// cleanup of StartT) tears it down.
func (b *Builder) Start(ctx context.Context) (*VM, error) {
	return b.start(ctx, func(m *manager.Manager, name string) ([]string, error) {
		if b.restore != "" {
			_, warnings, err := m.Restore(ctx, b.restore, manager.RestoreOptions{UseDefinition: true})
			return warnings, err
		}
		return m.Start(ctx, name, manager.StartOptions{})
	})
}

// start defines the guest in the rig's private store and starts it with
// run.
func (b *Builder) start(ctx context.Context, run func(m *manager.Manager, name string) ([]string, error)) (*VM, error) {
	if b.err != nil {
		return nil, b.err
	}
	d, err := b.domain()
	if err != nil {
		return nil, err
	}
	self, err := minivirtBinary(b.guest.Minivirt)
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath(manager.QEMUBinary); err != nil {
		return nil, fmt.Errorf("%s not found: install the Debian package qemu-system-x86", manager.QEMUBinary)
	}
	spawned := false
	vm := &VM{Name: d.Name, StateDir: filepath.Join(b.dir, "state"), RunDir: filepath.Join(b.dir, "run"), dir: b.dir,
		listeners: b.listeners, done: make(chan struct{})}
	vm.mgr = &manager.Manager{StateDir: vm.StateDir, RunDir: vm.RunDir, LockTimeout: 10 * time.Second,
		Spawn: manager.InProcess{
			Self: self,
			Log: func(name string) (io.WriteCloser, error) {
				if err := os.MkdirAll(vm.mgr.LogDir(), 0o700); err != nil {
					return nil, err
				}
				f, err := os.OpenFile(filepath.Join(vm.mgr.LogDir(), name+".supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
				spawned = err == nil // the supervisor starts once its log is open
				return f, err
			},
			OnExit: func(string, error) { close(vm.done) },
		}}
	vm.logPath = vm.mgr.ConsoleLog(d.Name)
	if _, _, err := vm.mgr.Define(d); err != nil {
		return nil, err
	}
	if vm.Warnings, err = run(vm.mgr, d.Name); err != nil {
		if spawned && !vm.waitGone(time.Minute) {
			// A start cut short by ctx leaves the supervisor to finish
			// and destroy the guest; its directory is not ours to take
			// from under it.
			b.dir = ""
			return nil, fmt.Errorf("%w (the guest's supervisor still runs: %s is left in place)", err, vm.dir)
		}
		return nil, err
	}
	// The VM owns the directory and the listeners from here: a deferred
	// b.Close must not remove them from under the running guest.
	b.dir, b.listeners, b.err = "", nil, errStarted
	return vm, nil
}

// errStarted is a Builder's error once its guest has started: each
// Builder is for one guest.
var errStarted = errors.New("rig: this Builder has started its guest already; call New for another")

// Close releases what b made when Start failed or was never called: its
// listeners and its private directory. After a successful Start they are
// the VM's, and Close leaves them to VM.Close.
func (b *Builder) Close() error {
	for _, l := range b.listeners {
		l.Close()
	}
	if b.dir == "" {
		return nil
	}
	return os.RemoveAll(b.dir) // the rig's own: made by New with os.MkdirTemp
}

// waitGone waits at most d for the supervisor to return.
func (vm *VM) waitGone(d time.Duration) bool {
	select {
	case <-vm.done:
		return true
	case <-time.After(d):
		return false
	}
}

func minivirtBinary(given string) (string, error) {
	for _, p := range []string{given, os.Getenv("MINIVIRT_BIN")} {
		if p != "" {
			return filepath.Abs(p)
		}
	}
	p, err := exec.LookPath("minivirt")
	if err != nil {
		return "", errors.New("the minivirt binary is needed as the vmchannel helper: set Guest.Minivirt or $MINIVIRT_BIN, or put minivirt on PATH")
	}
	return filepath.Abs(p)
}

// Manager is the lifecycle engine of the rig's private state directory:
// every minivirt verb on the guest, as the command line has them.
func (vm *VM) Manager() *manager.Manager { return vm.mgr }

// Destroy stops the guest at once.
func (vm *VM) Destroy() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := vm.mgr.Destroy(ctx, vm.Name); err != nil && vm.running() {
		// QEMU gone and its supervisor still recording the end: wait for
		// it, as Wait does.
		if nr := new(manager.NotRunningError); !errors.As(err, &nr) {
			return err
		}
	}
	_, err := vm.Wait(ctx)
	return err
}

// Shutdown presses the guest's ACPI power button and waits until it is
// off, at most until ctx ends.
func (vm *VM) Shutdown(ctx context.Context) error {
	timeout := 10 * time.Minute
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := vm.mgr.Shutdown(ctx, vm.Name, timeout); err != nil {
		return err
	}
	_, err := vm.Wait(ctx)
	return err
}

func (vm *VM) running() bool {
	select {
	case <-vm.done:
		return false
	default:
		return true
	}
}

// Wait waits until QEMU has exited and returns the domain's final record:
// State "shut off" with Reason "shutdown" after a clean power-off.
func (vm *VM) Wait(ctx context.Context) (store.Runtime, error) {
	select {
	case <-vm.done:
	case <-ctx.Done():
		return store.Runtime{}, ctx.Err()
	}
	return vm.mgr.Wait(ctx, vm.Name)
}

// Close destroys the guest if it still runs and removes everything the rig
// created: listeners, directories, sockets, logs. It is safe to call more
// than once.
func (vm *VM) Close() error {
	vm.closeOnce.Do(func() {
		if vm.running() {
			vm.closeErr = vm.Destroy()
		}
		for _, l := range vm.listeners {
			l.Close()
		}
		// The directory is the rig's own (os.MkdirTemp, mode 0711: nobody
		// else creates entries in it), but while QEMU may still use it, it
		// stays, and the error says where.
		if vm.running() {
			vm.closeErr = fmt.Errorf("rig: %s still runs (%v): %s is left in place", vm.Name, vm.closeErr, vm.dir)
			return
		}
		if err := os.RemoveAll(vm.dir); err != nil && vm.closeErr == nil {
			vm.closeErr = err
		}
	})
	return vm.closeErr
}

// ConsoleText returns the serial console output so far.
func (vm *VM) ConsoleText() string {
	data, _ := os.ReadFile(vm.logPath)
	return string(data)
}

// Console returns the serial console output from the start as a stream that
// follows new output until the guest stops.
func (vm *VM) Console() io.Reader { return &follower{vm: vm} }

type follower struct {
	vm  *VM
	f   *os.File
	off int64
}

func (r *follower) Read(p []byte) (int, error) {
	for {
		if r.f == nil {
			f, err := os.Open(r.vm.logPath)
			if err == nil {
				r.f = f
			}
		}
		if r.f != nil {
			n, err := r.f.ReadAt(p, r.off)
			r.off += int64(n)
			if n > 0 {
				return n, nil
			}
			if err != nil && err != io.EOF {
				return 0, err
			}
		}
		if !r.vm.running() {
			if r.f != nil {
				// What came between the last read and the exit.
				if n, _ := r.f.ReadAt(p, r.off); n > 0 {
					r.off += int64(n)
					return n, nil
				}
				r.f.Close()
			}
			return 0, io.EOF
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitConsole waits until a console line matches pattern and returns it
// (without its line ending).
func (vm *VM) WaitConsole(ctx context.Context, pattern *regexp.Regexp) (string, error) {
	var seen int
	for {
		stopped := !vm.running() // look once more after the guest stopped
		text := vm.ConsoleText()
		for _, line := range strings.Split(text[seen:], "\n") {
			if line = strings.TrimRight(line, "\r"); pattern.MatchString(line) {
				return line, nil
			}
		}
		if i := strings.LastIndexByte(text, '\n'); i >= 0 {
			seen = i + 1
		}
		if stopped {
			return "", fmt.Errorf("%s stopped before its console matched %q", vm.Name, pattern)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for %q on the console of %s: %w", pattern, vm.Name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Accept waits for the next guest connection on l, at most until ctx ends.
func Accept(ctx context.Context, l net.Listener) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	if ul, ok := l.(*net.UnixListener); ok {
		if dl, ok := ctx.Deadline(); ok {
			ul.SetDeadline(dl)
			defer ul.SetDeadline(time.Time{})
		}
		c, err := ul.Accept()
		if err != nil && ctx.Err() != nil {
			return nil, fmt.Errorf("waiting for a guest connection: %w", ctx.Err())
		}
		return c, err
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for a guest connection: %w", ctx.Err())
	}
}

// StartT boots b's guest for a test: it fails the test when the guest does
// not start, destroys the guest and removes the rig in the test's cleanup,
// and writes the guest's console to the test log when the test failed.
func StartT(t testing.TB, b *Builder) *VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vm, err := b.Start(ctx)
	if err != nil {
		b.Close()
		t.Fatalf("rig: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console of %s:\n%s", vm.Name, tail(vm.ConsoleText(), 8000))
		}
		if err := vm.Close(); err != nil {
			t.Errorf("rig: closing %s: %v", vm.Name, err)
		}
	})
	return vm
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Script returns kernel command line parameters that make minivirt's tiny
// test guest (make guest) run script after boot, then power off.
func Script(script string) string {
	return "minivirt.run=" + base64.StdEncoding.EncodeToString([]byte(script)) + " minivirt.poweroff"
}

// ChannelAddr is the guest-side address of a vmchannel added by Listen.
func ChannelAddr(port uint16) string {
	return netip.AddrPortFrom(domain.DefaultVMChannelAddress, port).String()
}
