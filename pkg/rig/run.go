package rig

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/manager"
)

// Option adds to a guest that Run boots.
type Option func(*runConfig)

type runConfig struct {
	serves  []serve
	shares  [][2]string // tag, dir
	guest   Guest
	restore bool
}

type serve struct {
	port    uint16
	handler func(net.Conn)
}

// Serve gives the guest a vmchannel on 10.0.2.4:port; handler runs, in its
// own goroutine, for every guest connection to it, and owns the connection.
func Serve(port uint16, handler func(net.Conn)) Option {
	return func(c *runConfig) { c.serves = append(c.serves, serve{port, handler}) }
}

// Share shares the host directory dir with the guest under tag (see
// Builder.Share): the script mounts it, as root with
// `mount -t virtiofs TAG /mnt`.
func Share(tag, dir string) Option {
	return func(c *runConfig) { c.shares = append(c.shares, [2]string{tag, dir}) }
}

// WithGuest sets fields of the guest (memory, vCPUs, more kernel command line).
func WithGuest(g Guest) Option { return func(c *runConfig) { c.guest = g } }

// Run boots minivirt's tiny test guest, which runs script after boot and
// then powers off, with the vmchannels of its options. It fails t when the
// guest does not start; the guest is destroyed when the test ends, and its
// console goes to the test log when the test failed. It finds the guest and
// the minivirt binary itself (see TinyGuest and Binary).
func Run(t testing.TB, script string, opts ...Option) *VM {
	t.Helper()
	var cfg runConfig
	for _, o := range opts {
		o(&cfg)
	}
	g := cfg.guest
	g.Kernel, g.Initrd = TinyGuest(t)
	if g.Minivirt == "" {
		g.Minivirt = Binary(t)
	}
	var b *Builder
	if cfg.restore {
		var err error
		if b, err = restoredBuilder(g, script); err != nil {
			t.Fatalf("rig: %v", err)
		}
	} else {
		g.Cmdline = "console=ttyS0 " + g.Cmdline + " " + Script(script)
		b = New(g)
	}
	for _, s := range cfg.shares {
		if err := b.Share(s[0], s[1]); err != nil {
			t.Fatalf("rig: share %s: %v", s[0], err)
		}
	}
	for _, s := range cfg.serves {
		l, err := b.Listen(s.port)
		if err != nil {
			t.Fatalf("rig: vmchannel %d: %v", s.port, err)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return // closed with the rig
				}
				go s.handler(c)
			}
		}()
	}
	vm := StartT(t, b)
	vm.t = t
	return vm
}

// Restore makes Run start its guest from a save instead of booting it: the
// guest boots once (per test binary, and per machine while the guest, the
// minivirt binary and QEMU stay the same), is saved once it is ready, and
// each test gets its own guest restored from that file, with its own state
// and run directories, sockets and vmchannels. The script reaches the
// restored guest over a vmchannel (10.0.2.4:599) rather than the kernel
// command line; everything else is as Run without it.
func Restore() Option { return func(c *runConfig) { c.restore = true } }

// ExpectConsole waits, at most two minutes, for a console line that
// matches pattern and returns it; otherwise it fails t.
func (vm *VM) ExpectConsole(t testing.TB, pattern string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	line, err := vm.WaitConsole(ctx, regexp.MustCompile(pattern))
	if err != nil {
		t.Fatalf("rig: %v", err)
	}
	return line
}

// DialGuest opens a connection to the guest's TCP port, through an inbound
// forward on a Unix socket of the rig's (added to the running guest the
// first time a port is dialled): nothing listens on the host's TCP.
func (vm *VM) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	path := filepath.Join(vm.dir, fmt.Sprintf("guest-%d.sock", port))
	vm.forwardMu.Lock()
	defer vm.forwardMu.Unlock()
	if vm.forwards == nil {
		vm.forwards = map[uint16]bool{}
	}
	if !vm.forwards[port] {
		f := domain.Forward{GuestPort: port, Path: path}
		if err := vm.mgr.AddForward(ctx, vm.Name, f, manager.Scope{Live: true}); err != nil {
			return nil, fmt.Errorf("rig: forwarding guest port %d: %w", port, err)
		}
		vm.forwards[port] = true
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", path)
}

// moduleRoot is the root of the minivirt module this package belongs to.
func moduleRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// guestOnce and binaryOnce build at most once per test binary.
var (
	guestOnce  = sync.OnceValues(findGuest)
	binaryOnce = sync.OnceValues(findBinary)
)

// TinyGuest returns the kernel and initramfs of minivirt's tiny test guest:
// from $MINIVIRT_GUEST_DIR, else the module's build/guest, which it builds
// there as `make guest` does when it is missing (Debian: the kernel comes
// from apt). It fails t when neither works.
func TinyGuest(t testing.TB) (kernel, initrd string) {
	t.Helper()
	dir, err := guestOnce()
	if err != nil {
		t.Fatalf("rig: %v", err)
	}
	return filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.gz")
}

func findGuest() (string, error) {
	dir := os.Getenv("MINIVIRT_GUEST_DIR")
	if dir == "" {
		dir = filepath.Join(moduleRoot(), "build", "guest")
	}
	if _, err := os.Stat(filepath.Join(dir, "initrd.gz")); err == nil {
		return filepath.Abs(dir)
	}
	cmd := exec.Command(filepath.Join(moduleRoot(), "scripts", "build-guest.sh"), dir)
	cmd.Dir = moduleRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the tiny guest into %s: %v\n%s", dir, err, out)
	}
	return filepath.Abs(dir)
}

// Binary returns the minivirt binary QEMU runs as the vmchannel helper:
// $MINIVIRT_BIN, else minivirt on PATH, else one it builds from this module
// (once per test binary). It fails t when none can be had.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := binaryOnce()
	if err != nil {
		t.Fatalf("rig: %v", err)
	}
	return bin
}

func findBinary() (string, error) {
	if p, err := minivirtBinary(""); err == nil {
		return p, nil
	}
	// Into the module's build directory, as `make build` does, or the
	// user's cache when the module is read-only (a dependency): not a
	// temporary directory that would outlive the tests.
	dir := filepath.Join(moduleRoot(), "build")
	if err := os.MkdirAll(dir, 0o755); err != nil || writable(dir) != nil {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", err
		}
		dir = filepath.Join(cache, "minivirt")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
	}
	bin := filepath.Join(dir, "minivirt-rig")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/minivirt/minivirt/cmd/minivirt")
	cmd.Dir = moduleRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building minivirt: %v\n%s", err, out)
	}
	return bin, nil
}

func writable(dir string) error {
	f, err := os.CreateTemp(dir, ".probe-")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}
