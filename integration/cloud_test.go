package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
)

// cloudImage is the Debian 12 cloud image `make cloud-image` builds (cloud-init,
// openssh-server, qemu-guest-agent, no user, no password):
// $MINIVIRT_CLOUD_IMAGE, else build/cloud/debian-12.qcow2, built there when
// missing (as root, as `make test` runs). Never skipped: a missing image
// fails the test.
func cloudImage(t *testing.T) string {
	t.Helper()
	img := os.Getenv("MINIVIRT_CLOUD_IMAGE")
	if img == "" {
		img = filepath.Join(testenv.Root(), "build", "cloud", "debian-12.qcow2")
	}
	if _, err := os.Stat(img); err != nil {
		cmd := exec.Command(filepath.Join(testenv.Root(), "scripts", "build-cloud-image.sh"), filepath.Dir(img))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("building the cloud image (make cloud-image, as root): %v\n%s", err, out)
		}
	}
	return img
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sshUntil runs `minivirt ssh NAME -- command` until it succeeds, within
// the boot deadline: the guest's sshd comes up some time after start.
func (h *host) sshUntil(name, command string) string {
	h.t.Helper()
	deadline := time.Now().Add(bootDeadline)
	for {
		out, errs, code := h.Run("", "ssh", name, "--", command)
		if code == 0 {
			return out
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("ssh %s -- %s: no success within %s; last: exit %d: %s", name, command, bootDeadline, code, errs)
		}
		time.Sleep(2 * time.Second) // the guest is still booting: try again
	}
}

// TestCloudImage: a cloud image with cloud-init and no user becomes a guest
// one logs in to with `minivirt ssh`, strict host-key checking and no TCP
// port on the host; the guest agent answers guestinfo, domifaddr --source
// agent and shutdown --mode agent; the image is never written; a second boot does not
// make the user again and ssh still works; undefine removes what create
// made and leaves the image.
func TestCloudImage(t *testing.T) {
	img := cloudImage(t)
	t.Parallel()
	h := newHost(t)
	before := fileSum(t, img)
	h.OK("", "create", "deb", "--image", img, "--memory", "1GiB", "--start")
	if out := h.sshUntil("deb", "hostname"); strings.TrimSpace(out) != "deb" {
		t.Errorf("hostname in the guest: %q; want deb", out)
	}
	if out := h.sshUntil("deb", "sudo -n id -u"); strings.TrimSpace(out) != "0" {
		t.Errorf("passwordless sudo: %q", out)
	}
	// The guest agent, through its channel: the guest's own words.
	if out := h.OK("", "guestinfo", "deb", "--hostname"); !strings.Contains(out, "deb") {
		t.Errorf("guestinfo --hostname: %q", out)
	}
	if out := h.OK("", "domifaddr", "deb", "--source", "agent"); !strings.Contains(out, "10.0.2.15/24") {
		t.Errorf("domifaddr --source agent:\n%s", out)
	}
	// domstats: QEMU's and minivirt's counters of a guest that did work.
	stats := h.OK("", "domstats", "deb")
	for _, want := range []string{"state.state=1", "vcpu.current=2", "block.0.name=vda", "block.1.name=vdb", "balloon.current="} {
		if !strings.Contains(stats, want) {
			t.Errorf("domstats lacks %s:\n%s", want, stats)
		}
	}
	for _, key := range []string{"block.0.rd.bytes=", "net.0.rx.bytes=", "net.0.tx.bytes="} {
		if i := strings.Index(stats, key); i < 0 || strings.HasPrefix(stats[i+len(key):], "0\n") {
			t.Errorf("domstats %s is missing or 0 after a boot and ssh sessions:\n%s", key, stats)
		}
	}
	h.OK("", "shutdown", "deb", "--timeout", "3m")
	if fileSum(t, img) != before {
		t.Error("the image changed")
	}
	h.OK("", "start", "deb")
	// cloud-init's once-per-instance steps do not run again (one user, one
	// host key, the one minivirt knows: strict checking passes).
	if out := h.sshUntil("deb", "getent passwd minivirt | cut -d: -f1; ls /etc/ssh/ssh_host_*_key | wc -l"); out != "minivirt\n1\n" {
		t.Errorf("after the second boot: %q", out)
	}
	h.OK("", "shutdown", "deb", "--mode", "agent", "--timeout", "3m")
	if st := h.status("deb"); st.State != "shut off" || st.Reason != "shutdown" {
		t.Errorf("after shutdown --mode agent: %+v", st)
	}
	h.OK("", "undefine", "deb")
	for _, dir := range []string{"disks", "access", "created"} {
		entries, _ := os.ReadDir(filepath.Join(h.stateDir, dir))
		for _, e := range entries {
			t.Errorf("undefine left %s/%s", dir, e.Name())
		}
	}
	if fileSum(t, img) != before {
		t.Error("the image changed")
	}
}
