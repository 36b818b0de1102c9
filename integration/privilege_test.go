package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/proc"
)

// privStatus is what status -o json says of QEMU's privileges.
type privStatus struct {
	QEMUPID  int    `json:"qemu_pid"`
	QEMUUID  int    `json:"qemu_uid"`
	Confined string `json:"confined"`
}

func (h *host) privileges(name string) privStatus {
	h.t.Helper()
	var st privStatus
	if err := json.Unmarshal([]byte(h.OK("", "status", name, "-o", "json")), &st); err != nil {
		h.t.Fatal(err)
	}
	return st
}

func owner(t *testing.T, path string) string {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fmt.Sprintf("%d:%d %v", st.Uid, st.Gid, fi.Mode())
}

// TestQEMUNeverRoot: started by root, QEMU drops to an unprivileged user
// once it has initialised, and a domain that needs no filesystem after
// start is confined to an empty directory; its vmchannel, qcow2 and
// transient disks, console and QMP all work, and the user's files keep
// their owners.
func TestQEMUNeverRoot(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs as root (`make test` as root), to show QEMU is not")
	}
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	qcow := filepath.Join(h.top, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", qcow, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	raw := filepath.Join(h.top, "base.img")
	os.WriteFile(raw, append([]byte("TRANSIENT-BASE\n"), make([]byte, 1<<20)...), 0o600)
	files := []string{qcow, raw, filepath.Join(guestDir, "vmlinuz"), filepath.Join(guestDir, "initrd.gz")}
	before := map[string]string{}
	for _, f := range files {
		before[f] = owner(t, f)
	}
	disks := `<disk type='file'><driver name='qemu' type='qcow2'/><source file='` + qcow + `'/><target dev='vda'/></disk>` +
		`<disk type='file'><driver name='qemu' type='raw'/><source file='` + raw + `'/><target dev='vdb'/><transient/></disk>`
	h.boot(guest{name: "priv", devices: vmchannelXML(600, svc.path) + disks})

	st := h.privileges("priv")
	real, effective, err := proc.UIDs(st.QEMUPID)
	if err != nil {
		t.Fatal(err)
	}
	if real == 0 || effective == 0 || st.QEMUUID != effective {
		t.Errorf("QEMU runs as uid %d (effective %d), status says %d; want neither 0", real, effective, st.QEMUUID)
	}
	root, _ := os.Readlink("/proc/" + strconv.Itoa(st.QEMUPID) + "/root")
	if want := filepath.Join(h.runDirOf("priv"), "root"); root != want || st.Confined != want {
		t.Errorf("QEMU's root is %q (status says %q); want the empty %s", root, st.Confined, want)
	}
	if entries, _ := os.ReadDir(root); len(entries) != 0 {
		t.Errorf("the chroot is not empty: %v", entries)
	}
	// Everything the guest had still works.
	if out, rc := h.exec("priv", "minivirt-guest request 10.0.2.4:600 ping", time.Minute); rc != 0 || !strings.Contains(out, "reply: reply: ping") {
		t.Errorf("vmchannel: exit %d, %q", rc, out)
	}
	out, rc := h.exec("priv", "echo W > /dev/vdb && head -c 1 /dev/vdb && echo && dd if=/dev/vda bs=512 count=1 2>/dev/null | wc -c", time.Minute)
	if rc != 0 || !strings.Contains(out, "W") || !strings.Contains(out, "512") {
		t.Errorf("disks: exit %d, %q", rc, out)
	}
	if out := h.OK("", "qmp", "priv", `{"execute":"query-status"}`); !strings.Contains(out, `"running"`) {
		t.Errorf("QMP: %s", out)
	}

	// On QEMU's user network QEMU spawns the helper: unprivileged, not confined.
	h.boot(guest{name: "privslirp", network: "slirp", devices: vmchannelXML(601, svc.path)})
	sl := h.privileges("privslirp")
	if sl.QEMUUID == 0 || sl.Confined != "" {
		t.Errorf("slirp domain: QEMU uid %d, confined %q; want unprivileged and not confined (it spawns the helper)", sl.QEMUUID, sl.Confined)
	}
	if out, rc := h.exec("privslirp", "minivirt-guest request 10.0.2.4:601 ping", time.Minute); rc != 0 || !strings.Contains(out, "reply: reply: ping") {
		t.Errorf("vmchannel on slirp: exit %d, %q", rc, out)
	}

	h.OK("", "destroy", "priv")
	h.OK("", "destroy", "privslirp")
	h.OK("", "undefine", "priv")
	h.OK("", "undefine", "privslirp")
	for _, f := range files {
		if after := owner(t, f); after != before[f] {
			t.Errorf("%s: owner and mode %s, were %s", f, after, before[f])
		}
	}
	if data, _ := os.ReadFile(raw); !strings.HasPrefix(string(data), "TRANSIENT-BASE") {
		t.Error("the transient disk's base image changed")
	}
}

// TestNonRootUnchanged: run by a user other than root, minivirt runs QEMU
// as that user, unconfined, as it always has.
func TestNonRootUnchanged(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs as root, to become another user")
	}
	const nobody = 65534
	h := newHost(t)
	for _, d := range []string{h.stateDir, h.runDir} {
		os.MkdirAll(d, 0o700)
		os.Chown(d, nobody, nobody)
	}
	as := func(args ...string) (string, int) {
		cmd := h.Command("", args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	xml := filepath.Join(h.top, "nr.xml")
	os.WriteFile(xml, []byte(guest{name: "nr"}.xml()), 0o644)
	if out, code := as("define", xml); code != 0 {
		t.Fatalf("define as uid %d: %s", nobody, out)
	}
	if out, code := as("start", "nr"); code != 0 {
		t.Fatalf("start as uid %d: %s", nobody, out)
	}
	t.Cleanup(func() { as("destroy", "nr") })
	h.waitLog("nr", readyLine, bootDeadline)
	out, _ := as("status", "nr", "-o", "json")
	var st privStatus
	json.Unmarshal([]byte(out), &st)
	if st.QEMUUID != nobody || st.Confined != "" {
		t.Errorf("as uid %d: QEMU uid %d, confined %q; want QEMU as that user, unconfined: %s", nobody, st.QEMUUID, st.Confined, out)
	}
	if out, code := as("destroy", "nr"); code != 0 {
		t.Errorf("destroy as uid %d: %s", nobody, out)
	}
}
