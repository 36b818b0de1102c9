package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/fakeqemu"
	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/manager"
)

// asCLI makes the test binary run as minivirt itself (TestMain), for the
// ProxyCommand of an in-process `ssh`, which names this binary.
const asCLI = "MINIVIRT_TEST_AS_CLI"

// sshEnv is a private minivirt whose directories hold characters the shell
// and ssh treat specially (a quote, "%", a space), with the domain vm
// defined and, unless bare, the login `minivirt create` would record,
// whose key and known_hosts files exist.
func sshEnv(t *testing.T, bare bool) (*env, manager.Access) {
	t.Helper()
	dir := t.TempDir()
	state := filepath.Join(dir, "it's 100% state")
	e := &env{CLI: testenv.CLI{T: t, Binary: binary, StateDir: state, RunDir: filepath.Join(dir, "run")}, stateDir: state}
	e.OK(domainXML("vm", ""), "define", "-")
	if bare {
		return e, manager.Access{}
	}
	keys := filepath.Join(dir, "keys 50%")
	acc := manager.Access{User: "debian", IdentityFile: filepath.Join(keys, "id_ed25519"), KnownHostsFile: filepath.Join(keys, "it's known_hosts")}
	if err := os.MkdirAll(keys, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{acc.IdentityFile, acc.KnownHostsFile} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m := &manager.Manager{StateDir: e.StateDir, RunDir: e.RunDir, LockTimeout: 10 * time.Second}
	if err := m.SetAccess("vm", acc); err != nil {
		t.Fatal(err)
	}
	return e, acc
}

// sshG is what OpenSSH's client makes of a configuration: `ssh -G` with
// args, as keyword (lower case) to values.
func sshG(t *testing.T, args ...string) map[string][]string {
	t.Helper()
	path, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("OpenSSH's client is not installed (Debian: apt-get install openssh-client)")
	}
	out, err := exec.Command(path, append([]string{"-G"}, args...)...).Output()
	if err != nil {
		t.Fatalf("ssh -G %q: %v", args, err)
	}
	got := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		got[strings.ToLower(k)] = append(got[strings.ToLower(k)], v)
	}
	return got
}

// checkSSHView checks what ssh makes of the login: the user, host key alias
// and strict checking, the one key, the known_hosts file (ssh shows it
// expanded), and a ProxyCommand that, run the way ssh runs it (its "%%"
// expanded, then by the shell), reaches this state directory's domain vm.
func checkSSHView(t *testing.T, got map[string][]string, acc manager.Access, env []string) {
	t.Helper()
	for k, want := range map[string]string{"user": "debian", "hostkeyalias": "vm", "identitiesonly": "yes", "stricthostkeychecking": "true",
		"userknownhostsfile": acc.KnownHostsFile} {
		if v := got[k]; len(v) != 1 || v[0] != want {
			t.Errorf("ssh reads %s as %q, want %q", k, v, want)
		}
	}
	// ssh -G shows identity files as written, before its own expansion.
	if !slices.Contains(got["identityfile"], strings.ReplaceAll(acc.IdentityFile, "%", "%%")) {
		t.Errorf("ssh reads identityfile as %q, want %s among them", got["identityfile"], acc.IdentityFile)
	}
	if len(got["proxycommand"]) != 1 {
		t.Fatalf("proxycommand %q", got["proxycommand"])
	}
	proxy := strings.ReplaceAll(got["proxycommand"][0], "%%", "%")
	cmd := exec.Command("/bin/sh", "-c", "exec "+proxy)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil || stdout.Len() != 0 || stderr.String() != "minivirt: domain vm is not running\n" {
		t.Errorf("the ProxyCommand %s: %v, stdout %q, stderr %q; want it to find vm not running", proxy, err, stdout.String(), stderr.String())
	}
}

// `ssh-config` prints a block that OpenSSH reads as intended, quoting
// included, and whose ProxyCommand reaches the domain.
func TestSSHConfig(t *testing.T) {
	e, acc := sshEnv(t, false)
	out := e.OK("", "ssh-config", "vm")
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	want := []string{"Host vm", "  HostName vm", "  HostKeyAlias vm", "  User debian",
		`  IdentityFile "` + strings.ReplaceAll(acc.IdentityFile, "%", "%%") + `"`, "  IdentitiesOnly yes",
		`  UserKnownHostsFile "` + strings.ReplaceAll(acc.KnownHostsFile, "%", "%%") + `"`, "  StrictHostKeyChecking yes"}
	if len(lines) != len(want)+1 || !slices.Equal(lines[:len(want)], want) || !strings.HasPrefix(lines[len(want)], "  ProxyCommand ") {
		t.Fatalf("ssh-config printed:\n%s", out)
	}
	file := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(file, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	got := sshG(t, "-F", file, "vm")
	if got["hostname"][0] != "vm" || got["port"][0] != "22" {
		t.Errorf("ssh reads hostname %q port %q", got["hostname"], got["port"])
	}
	checkSSHView(t, got, acc, nil)
}

// `ssh` runs the system's ssh with the argv it should, which OpenSSH reads
// as the ssh-config block's settings, the guest's command after the host.
func TestSSHArgv(t *testing.T) {
	e, acc := sshEnv(t, false)
	var gotPath string
	var gotArgv []string
	var stdout, stderr bytes.Buffer
	a := &app{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr,
		execSSH: func(path string, argv []string) error { gotPath, gotArgv = path, argv; return nil }}
	if code := runApp(a, []string{"--state-dir", e.StateDir, "--run-dir", e.RunDir, "ssh", "vm", "--", "uname", "-a"}); code != 0 {
		t.Fatalf("ssh: exit %d: %s", code, stderr.String())
	}
	if filepath.Base(gotPath) != "ssh" || stdout.Len() != 0 {
		t.Errorf("ran %q, printed %q", gotPath, stdout.String())
	}
	self, _ := os.Executable()
	proxy := strings.ReplaceAll("'"+self+"' --state-dir '"+strings.ReplaceAll(e.StateDir, "'", `'\''`)+"' --run-dir '"+e.RunDir+"' port connect vm 22", "%", "%%")
	want := []string{"ssh", "-o", "ProxyCommand=" + proxy,
		"-o", `UserKnownHostsFile="` + strings.ReplaceAll(acc.KnownHostsFile, "%", "%%") + `"`, "-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=vm", "-o", "IdentitiesOnly=yes", "-o", `IdentityFile="` + strings.ReplaceAll(acc.IdentityFile, "%", "%%") + `"`,
		"-l", "debian", "--", "vm", "uname", "-a"}
	if !slices.Equal(gotArgv, want) {
		t.Errorf("ssh argv\n got %q\nwant %q", gotArgv, want)
	}
	checkSSHView(t, sshG(t, gotArgv[1:]...), acc, []string{asCLI + "=1"})
}

// Without the login `minivirt create` records, `ssh` fails in one line that
// says so and what to do, and `ssh-config` still prints the way in.
func TestSSHWithoutAccess(t *testing.T) {
	e, _ := sshEnv(t, true)
	out, errs, code := e.Run("", "ssh", "vm")
	if code == 0 || out != "" || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "minivirt: ") ||
		!strings.Contains(errs, "not made by `minivirt create`") || !strings.Contains(errs, "minivirt ssh-config vm") || !strings.Contains(errs, "port connect vm 22") {
		t.Errorf("ssh without access: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	for _, args := range [][]string{{"ssh", "nope"}, {"ssh", "vm", "uname"}, {"ssh"}, {"ssh", "vm", "x", "--", "uname"}} {
		if out, errs, code := e.Run("", args...); code == 0 || out != "" || strings.Count(errs, "\n") != 1 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
	block := e.OK("", "ssh-config", "vm")
	if !strings.HasPrefix(block, "# minivirt has no login recorded for vm") || strings.Contains(block, "\n  User ") || !strings.Contains(block, "\nHost vm\n") {
		t.Errorf("ssh-config without access:\n%s", block)
	}
	file := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(file, []byte(block), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := sshG(t, "-F", file, "vm"); got["hostkeyalias"][0] != "vm" || len(got["proxycommand"]) != 1 {
		t.Errorf("ssh reads the bare block as %v", got)
	}
}

// `port connect` end to end with the fake QEMU's guest: a port nobody
// listens on fails at once in one line with a non-zero exit and nothing on
// stdout; a port that answers carries stdin there (its end half-closing
// the connection) and the guest's bytes, and only them, to stdout, and
// the guest's close ends the command; `port list` counts both.
func TestPortConnect(t *testing.T) {
	e := newEnv(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e.OK(`<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>fake</name><memory unit='MiB'>64</memory>
<os><kernel>`+self+`</kernel></os><devices><emulator>`+self+`</emulator><vmchannels network='netstack'/></devices>
<qemu:commandline><qemu:env name='`+fakeqemu.Env+`' value='guest'/></qemu:commandline></domain>`, "define", "-")
	e.OK("", "start", "fake")
	t.Cleanup(func() { e.Run("", "destroy", "fake") })

	began := time.Now()
	out, errs, code := e.Run("ping", "port", "connect", "fake", "22")
	if code == 0 || out != "" || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "minivirt: ") || !strings.Contains(errs, "connection refused") {
		t.Errorf("port connect to a closed port: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if took := time.Since(began); took > time.Minute { // a hang guard, not a speed claim
		t.Errorf("the refusal took %v", took)
	}

	out, errs, code = e.Run("ping", "port", "connect", "fake", "7")
	if code != 0 || out != fakeqemu.Greeting+"ping" || errs != "" {
		t.Errorf("port connect: exit %d, stdout %q, stderr %q; want the greeting, then ping after end of input", code, out, errs)
	}

	var items []forwardItem
	if err := jsonUnmarshal(e.OK("", "port", "list", "fake", "-o", "json"), &items); err != nil {
		t.Fatal(err)
	}
	counted := map[uint16]forwardItem{}
	for _, it := range items {
		if it.Host == connectHost {
			counted[it.GuestPort] = it
		}
	}
	if c := counted[22]; c.Total != 1 || c.Refused != 1 {
		t.Errorf("port list counts port 22 as %+v", c)
	}
	if c := counted[7]; c.Total != 1 || c.BytesOut != 4 || c.BytesIn != uint64(len(fakeqemu.Greeting)+4) {
		t.Errorf("port list counts port 7 as %+v", c)
	}
	for _, args := range [][]string{{"port", "connect", "fake", "0"}, {"port", "connect", "fake", "x"}, {"port", "connect", "fake"}, {"port", "connect", "nope", "22"}} {
		if out, errs, code := e.Run("", args...); code == 0 || out != "" || strings.Count(errs, "\n") != 1 {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errs)
		}
	}
}
