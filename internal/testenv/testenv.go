// Package testenv prepares what minivirt's real-QEMU tests need: the
// minivirt binary built from this module, and the tiny test guest.
package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Root is the module's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Minivirt builds the minivirt binary into dir and returns its path.
func Minivirt(dir string) (string, error) {
	// QEMU runs as an unprivileged user when the tests run as root, and
	// runs minivirt's helper: the binary must be reachable by others.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "minivirt")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/minivirt")
	cmd.Dir = Root()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building minivirt: %v\n%s", err, out)
	}
	return bin, nil
}

// Guest returns the directory of the tiny guest (vmlinuz, initrd.gz):
// $MINIVIRT_GUEST_DIR, else build/guest, built there when missing.
func Guest() (string, error) { return guest("MINIVIRT_GUEST_DIR", "guest", "cloud") }

// GenericGuest is Guest with Debian's generic kernel (build/guest-generic,
// or $MINIVIRT_GUEST_GENERIC_DIR), for what the cloud kernel lacks: 9p.
func GenericGuest() (string, error) {
	return guest("MINIVIRT_GUEST_GENERIC_DIR", "guest-generic", "generic")
}

func guest(env, name, flavour string) (string, error) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "", fmt.Errorf("qemu-system-x86_64 not found: run `make deps` (or `make test`, which does)")
	}
	dir := os.Getenv(env)
	if dir == "" {
		dir = filepath.Join(Root(), "build", name)
	}
	if _, err := os.Stat(filepath.Join(dir, "initrd.gz")); err != nil {
		cmd := exec.Command(filepath.Join(Root(), "scripts", "build-guest.sh"), dir, flavour)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("building the tiny guest: %v", err)
		}
	}
	return filepath.Abs(dir)
}

// kernelLine is one line of the kernel's log on the console.
var kernelLine = regexp.MustCompile(`(?m)^\[ *[0-9]+\.[0-9]+\] [^\n]*\n`)

// ConsoleExec runs a shell command line in the tiny guest through the serial
// console socket at path and returns what it printed and its exit status.
// When nothing listens there (the supervisor is gone), it uses QEMU's own
// console socket beside it. Calls on one guest must not overlap: each
// takes the console's input.
func ConsoleExec(path, command string, timeout time.Duration) (string, int, error) {
	c, err := net.Dial("unix", path)
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, os.ErrNotExist) {
		c, err = net.Dial("unix", filepath.Join(filepath.Dir(path), "qemu-console.sock"))
	}
	if err != nil {
		return "", 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	id := strconv.FormatInt(time.Now().UnixNano(), 36)
	// The output is bracketed by two markers, quoted apart so that the
	// shell's echo of the typed line (which may wrap, or arrive after the
	// previous prompt) never matches them; only the command's output does.
	fmt.Fprintf(c, "echo \"@@\"\"%s<\"; %s; echo \"@@\"\"%s \"$?\n", id, command, id)
	var screen bytes.Buffer
	buf := make([]byte, 4096)
	marker := regexp.MustCompile(`(?s)@@` + id + `<\r?\n(.*)@@` + id + ` (\d+)\r?\n`)
	for {
		n, err := c.Read(buf)
		screen.Write(buf[:n])
		if m := marker.FindSubmatch(screen.Bytes()); m != nil {
			rc, _ := strconv.Atoi(string(m[2]))
			// The kernel writes its messages to the same console whenever
			// it likes ("IPv6: ADDRCONF(NETDEV_CHANGE): eth0: link becomes
			// ready" as the link comes up): they are not the command's.
			out := kernelLine.ReplaceAllString(strings.ReplaceAll(string(m[1]), "\r", ""), "")
			return out, rc, nil
		}
		if err != nil {
			return screen.String(), 0, fmt.Errorf("guest: %q: %w", command, err)
		}
	}
}

// Processes lists the live processes (zombies excluded) other than the
// caller whose argv satisfies match.
func Processes(match func(argv []string) bool) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(cmdline) == 0 {
			continue
		}
		stat, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		if bytes.Contains(stat, []byte(") Z ")) {
			continue // exited; its parent has not reaped it
		}
		if match(strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Mentioning returns a match for Processes: any argument contains s.
func Mentioning(s string) func([]string) bool {
	return func(argv []string) bool {
		for _, a := range argv {
			if strings.Contains(a, s) {
				return true
			}
		}
		return false
	}
}

// CLI runs a minivirt binary against its own state and runtime directories.
type CLI struct {
	T                testing.TB
	Binary           string
	StateDir, RunDir string
	Env              []string // more environment, as KEY=VALUE
}

// Command returns the command for one minivirt invocation.
func (c CLI) Command(stdin string, args ...string) *exec.Cmd {
	cmd := exec.Command(c.Binary, args...)
	cmd.Env = append(append(os.Environ(), "MINIVIRT_STATE_DIR="+c.StateDir, "MINIVIRT_RUN_DIR="+c.RunDir), c.Env...)
	cmd.Stdin = strings.NewReader(stdin)
	return cmd
}

// Run runs minivirt and returns stdout, stderr and the exit status.
func (c CLI) Run(stdin string, args ...string) (string, string, int) {
	c.T.Helper()
	cmd := c.Command(stdin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.T.Fatalf("minivirt %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// OK runs minivirt, fails the test unless it exits 0, and returns stdout.
func (c CLI) OK(stdin string, args ...string) string {
	c.T.Helper()
	out, errs, code := c.Run(stdin, args...)
	if code != 0 {
		c.T.Fatalf("minivirt %s: exit %d: %s", strings.Join(args, " "), code, errs)
	}
	return out
}

// PrepareRig builds what a test of pkg/rig needs: the minivirt binary,
// exported as $MINIVIRT_BIN (the vmchannel helper), and the tiny guest,
// whose directory it returns. cleanup removes the binary.
func PrepareRig() (guestDir string, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "minivirt-rig")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	bin, err := Minivirt(dir)
	if err == nil {
		os.Setenv("MINIVIRT_BIN", bin)
		guestDir, err = Guest()
	}
	if err != nil {
		cleanup()
		return "", nil, err
	}
	return guestDir, cleanup, nil
}

// Libvirtd starts a private libvirtd (Debian's, as root) listening on a
// socket of its own under dir, and returns the URI that reaches it. It is
// stopped by pid when the test ends. Only one may run at a time: its QEMU
// driver locks state under /run/libvirt, so tests that call it must not run
// in parallel with each other.
func Libvirtd(t testing.TB, dir string) string {
	t.Helper()
	uri, stop, err := StartLibvirtd(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return uri
}

// StartLibvirtd is Libvirtd for a caller that is not a test: it returns
// the URI and the stop, which kills libvirtd by pid and waits for it.
func StartLibvirtd(dir string) (uri string, stop func(), err error) {
	if os.Geteuid() != 0 {
		return "", nil, errors.New("libvirtd needs root here (run `make test` as root)")
	}
	bin, err := exec.LookPath("libvirtd")
	if err != nil {
		return "", nil, errors.New("libvirtd not found: run `make deps` (Debian packages libvirt-daemon and libvirt-daemon-driver-qemu)")
	}
	sockDir := filepath.Join(dir, "libvirt")
	if err := os.MkdirAll(sockDir, 0o700); err != nil {
		return "", nil, err
	}
	conf := filepath.Join(dir, "libvirtd.conf")
	body := fmt.Sprintf("unix_sock_dir = %q\nunix_sock_rw_perms = \"0700\"\nunix_sock_ro_perms = \"0700\"\nunix_sock_admin_perms = \"0700\"\n", sockDir)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		return "", nil, err
	}
	for _, d := range []string{"/run/libvirt", "/var/log/libvirt", "/var/lib/libvirt/qemu", "/var/lib/libvirt/boot"} { // boot: virt-install's cloud-init seeds
		os.MkdirAll(d, 0o755)
	}
	stop, err = startDaemon(dir, "libvirtd", bin, filepath.Join(sockDir, "libvirt-sock"), "--config", conf, "--pid-file", filepath.Join(dir, "libvirtd.pid"))
	if err != nil {
		return "", nil, err
	}
	return "qemu:///system?socket=" + filepath.Join(sockDir, "libvirt-sock"), stop, nil
}

// Virtlogd makes sure a virtlogd serves libvirtd's QEMU logs: it starts one
// (stopped by pid when the test ends) unless one already listens.
func Virtlogd(t testing.TB, dir string) {
	t.Helper()
	stop, err := StartVirtlogd(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
}

// StartVirtlogd is Virtlogd for a caller that is not a test; stop does
// nothing when a virtlogd was already there.
func StartVirtlogd(dir string) (stop func(), err error) {
	const sock = "/run/libvirt/virtlogd-sock"
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		return func() {}, nil
	}
	bin, err := exec.LookPath("virtlogd")
	if err != nil {
		return nil, errors.New("virtlogd not found: run `make deps` (Debian package libvirt-daemon)")
	}
	os.MkdirAll("/run/libvirt", 0o755)
	return startDaemon(dir, "virtlogd", bin, sock, "--pid-file", filepath.Join(dir, "virtlogd.pid"))
}

// startDaemon starts bin with args, its output in dir/name.log, and waits
// at most 30 s until it listens on sock; stop kills it by pid.
func startDaemon(dir, name, bin, sock string, args ...string) (stop func(), err error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	stop = func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			data, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("%s did not listen on %s within 30s:\n%s", name, sock, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// RequireAll names the environment variable `make test` sets: with it, a
// test that lacks what it needs fails rather than skips, so that a skip is
// never the path CI takes.
const RequireAll = "MINIVIRT_REQUIRE_ALL"

// SkipUnlessRequired skips t, saying why, when run by hand; under
// `make test` (RequireAll set) it fails t instead.
func SkipUnlessRequired(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(RequireAll) != "" {
		t.Fatalf(format+" (make test needs it: %s is set)", append(args, RequireAll)...)
	}
	t.Skipf(format, args...)
}
