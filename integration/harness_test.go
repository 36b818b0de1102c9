// Package integration boots minivirt's tiny guest under real QEMU (TCG on
// hosts where KVM is not usable) through the real minivirt binary.
package integration

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/store"
)

var (
	binary   string // the minivirt binary under test
	guestDir string // vmlinuz and initrd.gz of the tiny guest
)

func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	var err error
	if guestDir, err = testenv.Guest(); err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "minivirt-integration")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if binary, err = testenv.Minivirt(dir); err != nil {
		return 0, err
	}
	return m.Run(), nil
}

// host is one test's private minivirt installation: its own state and
// runtime directories. The state directory holds a space and a comma, so
// every test also proves that QEMU option escaping works.
type host struct {
	testenv.CLI
	t        *testing.T
	top      string
	stateDir string
	runDir   string
}

func newHost(t *testing.T) *host {
	t.Helper()
	top, err := os.MkdirTemp("", "mv-")
	if err != nil {
		t.Fatal(err)
	}
	// Enter, not list: QEMU runs unprivileged, and on QEMU's user network
	// its helper reaches the relay socket in the run directory.
	if err := os.Chmod(top, 0o711); err != nil {
		t.Fatal(err)
	}
	h := &host{t: t, top: top, stateDir: filepath.Join(top, "state dir,1"), runDir: filepath.Join(top, "run")}
	h.CLI = testenv.CLI{T: t, Binary: binary, StateDir: h.stateDir, RunDir: h.runDir, Env: []string{"MINIVIRT_ACCEL="}}
	t.Cleanup(h.cleanup)
	return h
}

// cleanup destroys what the test left running, then fails the test if any
// process that belongs to this host outlived it.
func (h *host) cleanup() {
	for _, name := range h.names() {
		if st := h.status(name); st.State != "shut off" {
			h.Run("", "destroy", name)
		}
	}
	if left := h.processes(); len(left) > 0 {
		for _, pid := range left {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		h.t.Errorf("processes outlived the test: %v", left)
	}
	if h.t.Failed() {
		h.dumpLogs()
	}
	os.RemoveAll(h.top)
}

// processes lists the live processes whose command line names this host's
// directories.
func (h *host) processes() []int { return testenv.Processes(testenv.Mentioning(h.top)) }

func (h *host) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(h.stateDir, "logs", "*"))
	for _, l := range logs {
		data, _ := os.ReadFile(l)
		if len(data) > 6000 {
			data = data[len(data)-6000:]
		}
		h.t.Logf("--- %s:\n%s", filepath.Base(l), data)
	}
}

func (h *host) fails(want string, args ...string) {
	h.t.Helper()
	out, errs, code := h.Run("", args...)
	if code == 0 || !strings.HasPrefix(errs, "minivirt: ") || !strings.Contains(errs, want) {
		h.t.Fatalf("minivirt %s: exit %d, stdout %q, stderr %q; want a failure saying %q", strings.Join(args, " "), code, out, errs, want)
	}
}

func (h *host) names() []string {
	out, _, code := h.Run("", "list", "--all", "-o", "json")
	if code != 0 {
		return nil
	}
	var items []struct{ Name string }
	json.Unmarshal([]byte(out), &items)
	var names []string
	for _, it := range items {
		names = append(names, it.Name)
	}
	return names
}

// status is `minivirt status -o json`.
type status struct {
	Name          string `json:"name"`
	State         string `json:"state"`
	Reason        string `json:"reason"`
	Detail        string `json:"detail"`
	Accel         string `json:"accel"`
	QEMUPID       int    `json:"qemu_pid"`
	SupervisorPID int    `json:"supervisor_pid"`
	Supervised    bool   `json:"supervised"`
	Unrecorded    []int  `json:"unrecorded_qemu_pids"`
}

func (h *host) status(name string) status {
	h.t.Helper()
	var st status
	out, errs, code := h.Run("", "status", name, "-o", "json")
	if code != 0 {
		h.t.Fatalf("status %s: %s", name, errs)
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		h.t.Fatalf("status %s: %v: %s", name, err, out)
	}
	return st
}

// guest is a domain definition of the tiny guest.
type guest struct {
	name    string
	script  string // shell script the guest runs after boot (minivirt.run)
	cmdline string // extra kernel parameters
	devices string // extra <devices> content
	top     string // extra top-level elements
	network string // <vmchannels network=''/>, when set; netstack-stream is netstack on the stream backend
	// backend is minivirt's network's backend (<vmchannels backend=''/>
	// in the metadata), when set.
	backend string
	os      string // attributes of <os>, e.g. firmware='efi'
	osChild string // extra <os> content, e.g. <smbios mode='sysinfo'/>
	// kernelDir holds the vmlinuz and initrd.gz to boot (default: the
	// tiny guest's, guestDir).
	kernelDir string
}

func (g guest) xml() string {
	cmdline := "console=ttyS0 panic=-1 " + g.cmdline
	if g.script != "" {
		cmdline += " minivirt.run=" + base64.StdEncoding.EncodeToString([]byte(g.script))
	}
	kernels := guestDir
	if g.kernelDir != "" {
		kernels = g.kernelDir
	}
	devices, top, backend := g.devices, g.top, g.backend
	network := g.network
	if network == netstackStream {
		network, backend = "netstack", "stream"
	}
	if network != "" {
		devices += `<vmchannels network='` + network + `'/>`
	}
	if backend != "" {
		const meta = `<vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1'`
		if strings.Contains(top, meta) {
			top = strings.Replace(top, meta, meta+` backend='`+backend+`'`, 1)
		} else {
			top += `<metadata>` + meta + ` backend='` + backend + `'/></metadata>`
		}
	}
	return `<domain type='kvm'><name>` + g.name + `</name><memory unit='MiB'>192</memory><vcpu>1</vcpu>
<os ` + g.os + `><kernel>` + filepath.Join(kernels, "vmlinuz") + `</kernel><initrd>` + filepath.Join(kernels, "initrd.gz") + `</initrd>
<cmdline>` + cmdline + `</cmdline>` + g.osChild + `</os>` + top + `<devices>` + devices + `</devices></domain>`
}

// boot defines and starts g and waits until its userspace is up. A domain
// booted before has "ready" in its log already: boot waits for one more.
func (h *host) boot(g guest) {
	h.t.Helper()
	data, _ := os.ReadFile(h.logPath(g.name))
	before := strings.Count(string(data), readyLine)
	h.OK(g.xml(), "define", "-")
	h.OK("", "start", g.name)
	h.waitLogCount(g.name, readyLine, before+1, bootDeadline)
}

const readyLine = "minivirt-guest: ready"

// bootDeadline bounds a boot of the tiny guest. It takes seconds alone under
// TCG; the bound is for a 2-core CI host shared by every parallel test.
const bootDeadline = 3 * time.Minute

func (h *host) logPath(name string) string { return filepath.Join(h.stateDir, "logs", name+".log") }

// waitLog waits until the serial log of name contains want.
func (h *host) waitLog(name, want string, timeout time.Duration) string {
	h.t.Helper()
	return h.waitLogCount(name, want, 1, timeout)
}

func (h *host) waitLogCount(name, want string, n int, timeout time.Duration) string {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(h.logPath(name))
		if strings.Count(string(data), want) >= n {
			return string(data)
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: %q did not appear %d time(s) in the console log within %s", name, want, n, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitState polls status until the state is want.
func (h *host) waitState(name, want string, timeout time.Duration) status {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		st := h.status(name)
		if st.State == want {
			return st
		}
		select {
		case <-ctx.Done():
			h.t.Fatalf("%s: state %q (%s), want %q after %s", name, st.State, st.Reason, want, timeout)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// runDirOf is the domain's runtime directory.
func (h *host) runDirOf(name string) string { return filepath.Join(h.runDir, name) }

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	if !bytes.Contains(data, []byte(") Z ")) {
		return true
	}
	// A killed Go process's leader thread can be a zombie while its other
	// threads still exit, holding the descriptors (a listening socket
	// among them): it is dead once they are gone too.
	tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	return len(tasks) > 1
}

// waitStored waits until the state database records the domain in state.
func (h *host) waitStored(name, state string, timeout time.Duration) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if s, err := store.Open(h.stateDir, time.Second); err == nil {
			rt, err := s.GetRuntime(name)
			s.Close()
			if err == nil && rt.State == state {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("the state database did not record %s %s within %s", name, state, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitDead(t *testing.T, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive after %s", pid, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// exec runs a shell command line in the guest through its serial console.
func (h *host) exec(name, command string, timeout time.Duration) (string, int) {
	h.t.Helper()
	out, rc, err := testenv.ConsoleExec(filepath.Join(h.runDirOf(name), "console.sock"), command, timeout)
	if err != nil {
		h.t.Fatalf("%s: %v; console:\n%s", name, err, out)
	}
	// The guest's kernel writes to the same console whenever it likes
	// (an interface's link coming up, say), cutting into the command's
	// lines: what a test reads is the command's.
	return kernelMessage.ReplaceAllString(out, ""), rc
}

// kernelMessage is a kernel log line on the console, "[    3.859417] ...".
var kernelMessage = regexp.MustCompile(`\[ *\d+\.\d{6}\] [^\r\n]*`)

// service is a host service on a Unix socket that counts its accepts.
type service struct {
	path     string
	l        net.Listener
	accepted atomic.Int64
}

// listen starts a service on the Unix socket path; serve runs per
// connection (nil: reply "reply: " + everything read until the guest's
// half-close).
func listen(t *testing.T, path string, serve func(net.Conn)) *service {
	t.Helper()
	return serveOn(t, "unix", path, serve)
}

// listenTCP starts a service on a loopback TCP port and returns the port:
// what a guest must not reach except where a test lets it.
func listenTCP(t *testing.T, serve func(net.Conn)) (*service, int) {
	t.Helper()
	s := serveOn(t, "tcp", "127.0.0.1:0", serve)
	return s, s.l.Addr().(*net.TCPAddr).Port
}

func serveOn(t *testing.T, network, addr string, serve func(net.Conn)) *service {
	t.Helper()
	if serve == nil {
		serve = func(c net.Conn) {
			defer c.Close()
			b, _ := io.ReadAll(c)
			c.Write(append([]byte("reply: "), b...))
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &service{path: addr, l: l}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			go serve(c)
		}
	}()
	return s
}

func killPid(pid int) { syscall.Kill(pid, syscall.SIGKILL) }

// netstackStream names minivirt's own network on the stream backend
// (-netdev stream) in forNetworks; "netstack" is its default, vhost-user.
const netstackStream = "netstack-stream"

// forNetworks runs test once on each network that can carry vmchannels,
// minivirt's own on both its backends.
func forNetworks(t *testing.T, test func(t *testing.T, network string)) {
	for _, network := range []string{"slirp", "netstack", netstackStream} {
		t.Run(network, func(t *testing.T) {
			t.Parallel()
			test(t, network)
		})
	}
}

// forBackends runs test once on each backend of minivirt's own network.
func forBackends(t *testing.T, test func(t *testing.T, backend string)) {
	for _, backend := range []string{"vhost-user", "stream"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			test(t, backend)
		})
	}
}

// staleRunDir makes the runtime directory a supervisor owner left behind
// when it died: minivirt's marker and owner file, nothing else.
func staleRunDir(t *testing.T, dir string, owner proc.ID) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, ".minivirt-rundir"), []byte("made by minivirt\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "supervisor.id"), []byte(fmt.Sprintf("%d %d %s\n", owner.PID, owner.StartTime, owner.BootID)), 0o600)
}
