package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
)

// TestLibvirtRunsExportedDomain: a vmchannel domain exported with
// `dumpxml --libvirt` runs under a real libvirtd (Debian's, started by the
// test), its vmchannels served by `minivirt network serve`: two concurrent
// guest connections give two host accepts with the right replies. Then
// destroy and undefine leave nothing running.
func TestLibvirtRunsExportedDomain(t *testing.T) {
	// Not parallel: one libvirtd at a time (its QEMU driver locks system-wide state).
	h := newHost(t)
	// libvirt runs QEMU as libvirt-qemu: it must reach the sockets and the
	// console file under the test's directory (traverse, not list).
	if err := os.Chmod(h.top, 0o711); err != nil {
		t.Fatal(err)
	}
	uri := testenv.Libvirtd(t, filepath.Join(h.top, "libvirtd"))
	testenv.Virtlogd(t, filepath.Join(h.top, "libvirtd"))
	virsh := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("virsh", append([]string{"-c", uri}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("virsh %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	console := filepath.Join(h.top, "console.log")
	g := guest{name: "lv", script: "minivirt-guest parallel 2 10.0.2.4:600",
		devices: vmchannelXML(600, svc.path) + `<serial type='file'><source path='` + console + `' append='on'/></serial>`}
	xml := strings.Replace(g.xml(), "type='kvm'", "type='qemu'", 1) // libvirt wants KVM for 'kvm'
	h.OK(xml, "define", "-")

	serve := h.Command("", "network", "serve", "lv")
	var serveLog bytes.Buffer
	serve.Stdout, serve.Stderr = &serveLog, &serveLog
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		serve.Process.Kill()
		serve.Wait()
		if t.Failed() {
			t.Logf("network serve:\n%s", serveLog.String())
		}
	})
	sock := filepath.Join(h.top, "minivirt-net", "lv.sock")
	deadline := time.Now().Add(30 * time.Second)
	for !exists(sock) {
		if time.Now().After(deadline) {
			t.Fatalf("network serve did not listen on %s:\n%s", sock, serveLog.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	exported := filepath.Join(h.top, "lv-libvirt.xml")
	os.WriteFile(exported, []byte(h.OK("", "dumpxml", "lv", "--libvirt")), 0o644)
	virsh("define", exported)
	t.Cleanup(func() { // whatever happened: nothing of libvirt's outlives the test
		exec.Command("virsh", "-c", uri, "destroy", "lv").Run()
		exec.Command("virsh", "-c", uri, "undefine", "lv").Run()
	})
	// Twice: a QEMU that libvirt starts again connects to the same
	// `network serve` again (vhost-user's reconnect) and its guest meets
	// a fresh device.
	for boot := 1; boot <= 2; boot++ {
		virsh("start", "lv")
		deadline = time.Now().Add(3 * time.Minute)
		for {
			data, _ := os.ReadFile(console)
			log := string(data)
			if strings.Count(log, "connection 0 reply: reply: hello from guest connection 0") >= boot &&
				strings.Count(log, "connection 1 reply: reply: hello from guest connection 1") >= boot {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("boot %d: the guest's two connections were not answered under libvirt (%d accepts); console:\n%s", boot, svc.accepted.Load(), log)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if n := svc.accepted.Load(); n != int64(2*boot) {
			t.Errorf("boot %d: host service accepted %d connections; want %d, one for each guest connection", boot, n, 2*boot)
		}
		if boot == 1 {
			virsh("destroy", "lv")
		}
	}
	virsh("destroy", "lv")
	virsh("undefine", "lv")
	if out := virsh("list", "--all", "--name"); strings.TrimSpace(out) != "" {
		t.Errorf("libvirt still lists domains: %q", out)
	}
}
