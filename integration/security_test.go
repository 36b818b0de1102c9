package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// TestArgvAsIntended: with target paths full of characters that would
// inject QEMU options or guestfwd arguments (commas, spaces, quotes, a
// newline, shell syntax, a leading '-'), the argv QEMU runs with is exactly
// the one launcher.Build planned, the guest's connections reach the right
// service, and no shell ever ran.
func TestArgvAsIntended(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	// A shell would run in QEMU's working directory, "/" (the supervisor's).
	pwned := "/minivirt-pwned"
	os.Remove(pwned)
	dir := filepath.Join(h.top, "-x")
	os.Mkdir(dir, 0o700)
	hostile := []string{
		filepath.Join(dir, "a,b,,c.sock"),
		filepath.Join(dir, "it's \"q\".sock"),
		filepath.Join(dir, "$(touch minivirt-pwned);`touch minivirt-pwned`.sock"),
		filepath.Join(dir, "new\nline,guestfwd=x.sock"),
	}
	var devices strings.Builder
	for i, p := range hostile {
		listen(t, p, func(c net.Conn) {
			defer c.Close()
			b, _ := io.ReadAll(c)
			fmt.Fprintf(c, "service %d got %s", i, b)
		})
		devices.WriteString(vmchannelXML(600+i, xmlEscape(p)))
	}
	g := guest{name: "argv", network: "slirp", devices: devices.String()} // guestfwd's quoting
	h.boot(g)
	for i := range hostile {
		out, rc := h.exec("argv", fmt.Sprintf("minivirt-guest request 10.0.2.4:%d x", 600+i), time.Minute)
		if want := fmt.Sprintf("reply: service %d got x", i); rc != 0 || !strings.Contains(out, want) {
			t.Errorf("channel %d (%q): exit %d, %q; want %q", i, hostile[i], rc, out, want)
		}
	}
	if exists(pwned) {
		t.Error("a shell ran the target path")
	}

	// The argv QEMU runs with is the one Build plans for this domain.
	d, err := domain.Parse(strings.NewReader(g.xml()))
	if err != nil {
		t.Fatal(err)
	}
	d.UUID = h.uuid("argv") // generated at define
	kvm, why := launcher.DetectKVM(os.Getenv)
	env := launcher.Env{QEMU: "/usr/bin/qemu-system-x86_64", Self: binary, RunDir: h.runDirOf("argv"),
		LogDir: filepath.Join(h.stateDir, "logs"), KVM: kvm, KVMReason: why}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(h.status("argv").QEMUPID) + "/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(cmdline), "\x00"), "\x00")
	if os.Geteuid() == 0 {
		// The domain's own uid and gid, from minivirt's range; this
		// domain spawns the helper: no chroot.
		env.RunAs = proc.ArgAfter(got, "-runas")
		var uid, gid int
		if _, err := fmt.Sscanf(env.RunAs, "%d:%d", &uid, &gid); err != nil || uid < supervisor.QEMUIDBase || uid >= supervisor.QEMUIDBase+supervisor.QEMUSlots || gid != uid {
			t.Errorf("-runas %q: want UID:GID, equal, in [%d, %d)", env.RunAs, supervisor.QEMUIDBase, supervisor.QEMUIDBase+supervisor.QEMUSlots)
		}
	}
	plan, err := launcher.Build(d, env)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got[1:], plan.Argv[1:]) {
		t.Errorf("QEMU runs with\n%q\nwant\n%q", got, plan.Argv)
	}
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "'", "&apos;", `"`, "&quot;", "<", "&lt;", "\n", "&#10;").Replace(s)
}

func (h *host) uuid(name string) string {
	h.t.Helper()
	out := h.OK("", "dumpxml", name)
	_, rest, _ := strings.Cut(out, "<uuid>")
	u, _, _ := strings.Cut(rest, "</uuid>")
	return u
}

// TestGuestReach: from an isolated guest, nothing on the host is reachable
// but the configured channels (the host's TCP loopback through the gateway,
// the DNS address, an unconfigured port on the channel address), and QEMU
// runs under a seccomp filter.
func TestGuestReach(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	tcp, port := listenTCP(t, func(c net.Conn) { c.Close() })
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	h.boot(guest{name: "reach", network: "slirp", devices: vmchannelXML(600, svc.path)})
	for _, addr := range []string{fmt.Sprintf("10.0.2.2:%d", port), "10.0.2.2:22", "10.0.2.3:53", "10.0.2.4:601", "10.0.2.5:600"} {
		if out, rc := h.exec("reach", "minivirt-guest request "+addr+" probe", time.Minute); rc == 0 {
			t.Errorf("the guest reached %s: exit %d, %q", addr, rc, out)
		}
	}
	if n := tcp.accepted.Load(); n != 0 {
		t.Errorf("the host's TCP listener was reached %d times from the guest", n)
	}
	if out, rc := h.exec("reach", "minivirt-guest request 10.0.2.4:600 ok", time.Minute); rc != 0 || !strings.Contains(out, "reply: reply: ok") {
		t.Errorf("the configured channel: exit %d, %q", rc, out)
	}
	status, _ := os.ReadFile("/proc/" + strconv.Itoa(h.status("reach").QEMUPID) + "/status")
	if !strings.Contains(string(status), "Seccomp:\t2") {
		t.Errorf("QEMU runs without a seccomp filter:\n%s", status)
	}
}
