package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lastTick is the highest "tick N" the guest's counter printed so far.
func lastTick(t *testing.T, h *host, name string) int {
	t.Helper()
	data, _ := os.ReadFile(filepath.Join(h.stateDir, "logs", name+".log"))
	last := 0
	for _, m := range regexp.MustCompile(`tick (\d+)\r?\n`).FindAllStringSubmatch(string(data), -1) {
		n, _ := strconv.Atoi(m[1])
		last = max(last, n)
	}
	return last
}

// qemuUID is the real uid QEMU runs as.
func qemuUID(t *testing.T, pid int) string {
	t.Helper()
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			return strings.Fields(v)[0]
		}
	}
	t.Fatalf("no Uid for pid %d", pid)
	return ""
}

// TestSaveRestore: a guest saved mid-run and restored goes on (its console
// counter continues, the kernel does not boot again) and its next guest
// connection reaches the same vmchannel; the netstack guest keeps its
// address; managedsave then start resumes; save --paused restores paused;
// and files that are truncated, another program's, or whose disk changed
// are refused without starting or removing anything. QEMU is never root.
func TestSaveRestore(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	disk := filepath.Join(h.top, "data.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	devices := vmchannelXML(600, svc.path) +
		`<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='` + disk + `'/><target dev='vdb' bus='virtio'/></disk>`
	// minivirt.dhcp: the guest takes its address from the network's DHCP
	// server, whose lease a restore must bring back.
	h.boot(guest{name: "sr", network: "netstack", devices: devices, cmdline: "minivirt.dhcp",
		script: `i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done &`})
	h.waitLog("sr", "tick 3\r\n", time.Minute)
	if out, rc := h.exec("sr", "minivirt-guest request 10.0.2.4:600 before", time.Minute); rc != 0 || !strings.Contains(out, "reply: before") {
		t.Fatalf("the vmchannel before the save: exit %d, %q", rc, out)
	}
	addrBefore := h.OK("", "domifaddr", "sr")
	if !strings.Contains(addrBefore, "10.0.2.15") {
		t.Fatalf("domifaddr before the save shows no lease:\n%s", addrBefore)
	}
	qemuBefore := h.status("sr").QEMUPID

	file := filepath.Join(h.top, "sr.save")
	h.OK("", "save", "sr", file)
	if st := h.status("sr"); st.State != "shut off" || st.Reason != "saved" {
		t.Fatalf("after save: %+v, want shut off (saved)", st)
	}
	if entries, _ := filepath.Glob(filepath.Join(h.top, ".sr.save*")); len(entries) != 0 {
		t.Errorf("the save left %v", entries)
	}
	ticked := lastTick(t, h, "sr")

	restore := func(args ...string) {
		t.Helper()
		h.OK("", append([]string{"restore", file}, args...)...)
	}
	goesOn := func(what string) {
		t.Helper()
		from := lastTick(t, h, "sr")
		h.waitLog("sr", "tick "+strconv.Itoa(from+5)+"\r\n", time.Minute)
		if n := strings.Count(h.OK("", "log", "sr"), "Linux version"); n != 1 {
			t.Fatalf("%s: the kernel booted %d times; a restore goes on without a boot", what, n)
		}
		if uid := qemuUID(t, h.status("sr").QEMUPID); uid == "0" {
			t.Errorf("%s: QEMU runs as root", what)
		}
	}

	restore()
	if st := h.status("sr"); st.State != "running" || st.Reason != "restored" || st.QEMUPID == qemuBefore {
		t.Fatalf("after restore: %+v, want running (restored) in a new QEMU", st)
	}
	goesOn("restore")
	if from := lastTick(t, h, "sr"); from <= ticked {
		t.Errorf("the counter went from %d to %d: it did not go on", ticked, from)
	}
	before := svc.accepted.Load()
	if out, rc := h.exec("sr", "minivirt-guest request 10.0.2.4:600 after", time.Minute); rc != 0 || !strings.Contains(out, "reply: after") {
		t.Fatalf("the vmchannel after the restore: exit %d, %q", rc, out)
	}
	if svc.accepted.Load() != before+1 {
		t.Errorf("the host service accepted %d connections after the restore, want 1", svc.accepted.Load()-before)
	}
	if got := h.OK("", "domifaddr", "sr"); got != addrBefore {
		t.Errorf("domifaddr after the restore:\n%s\nwant, as before:\n%s", got, addrBefore)
	}

	// managedsave: start goes on from it, and it is gone after.
	h.OK("", "managedsave", "sr")
	if !strings.Contains(h.OK("", "dominfo", "sr"), "Managed save:   yes") {
		t.Errorf("dominfo after managedsave:\n%s", h.OK("", "dominfo", "sr"))
	}
	h.fails("managed save image", "undefine", "sr")
	h.OK("", "start", "sr")
	if st := h.status("sr"); st.State != "running" || st.Reason != "restored" {
		t.Fatalf("start after managedsave: %+v, want running (restored)", st)
	}
	goesOn("managedsave")
	if !strings.Contains(h.OK("", "dominfo", "sr"), "Managed save:   no") {
		t.Errorf("the managed save is still there after start")
	}

	// save --paused: the restored guest waits, paused, until resumed.
	h.OK("", "save", "sr", file, "--paused")
	restore()
	if st := h.status("sr"); st.State != "paused" {
		t.Fatalf("restore of a save --paused: %+v, want paused", st)
	}
	h.OK("", "resume", "sr")
	goesOn("save --paused")

	// Refusals: nothing starts, nothing is removed.
	h.OK("", "save", "sr", file)
	whole, _ := os.ReadFile(file)
	for _, c := range []struct {
		name, want string
		data       []byte
	}{
		{"truncated", "truncated", whole[:len(whole)/2]},
		{"another program's", "not a file minivirt saved", append([]byte("LibvirtQemudSave"), whole[16:]...)},
	} {
		bad := filepath.Join(h.top, strings.ReplaceAll(c.name, " ", "-")+".save")
		os.WriteFile(bad, c.data, 0o600)
		h.fails(c.want, "restore", bad)
		if _, err := os.Stat(bad); err != nil {
			t.Errorf("%s: the refused file is gone: %v", c.name, err)
		}
		if st := h.status("sr"); st.State != "shut off" || st.Reason != "saved" {
			t.Errorf("%s: a refused restore changed the domain: %+v", c.name, st)
		}
	}
	// The disk swapped for a copy: another file, or the same one written.
	data, _ := os.ReadFile(disk)
	os.WriteFile(disk+".new", data, 0o600)
	os.Rename(disk+".new", disk)
	h.fails("changed since the guest was saved", "restore", file)
	if _, err := os.Stat(file); err != nil {
		t.Errorf("the refused save file is gone: %v", err)
	}
	if st := h.status("sr"); st.State != "shut off" {
		t.Errorf("a refused restore started the domain: %+v", st)
	}
}

// TestSnapshots: internal snapshots of a running guest's qcow2 disk, with
// its memory: what the guest wrote after snapshot-create-as is gone after
// snapshot-revert, and back after reverting to the later snapshot;
// snapshot-current, snapshot-list and snapshot-delete keep the record; a
// --disk-only snapshot is reverted once the domain is shut off; raw and
// transient disks are refused by name.
func TestSnapshots(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	disk := filepath.Join(h.top, "data.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	devices := `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='` + disk + `'/><target dev='vdb' bus='virtio'/></disk>`
	h.boot(guest{name: "snap", devices: devices})
	// The guest's only virtio disk is its /dev/vda, whatever its target.
	write := func(word string) {
		t.Helper()
		if out, rc := h.exec("snap", "echo "+word+" | dd of=/dev/vda bs=512 count=1 conv=fsync 2>/dev/null", time.Minute); rc != 0 {
			t.Fatalf("writing %s: exit %d: %s", word, rc, out)
		}
	}
	read := func() string {
		t.Helper()
		out, rc := h.exec("snap", "dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n 1", time.Minute)
		if rc != 0 {
			t.Fatalf("reading the disk: exit %d: %s", rc, out)
		}
		return strings.TrimSpace(out)
	}
	write("one")
	h.OK("", "snapshot-create-as", "snap", "s1")
	write("two")
	h.OK("", "snapshot-create-as", "snap", "s2")
	write("three")
	qemu := h.status("snap").QEMUPID

	h.OK("", "snapshot-revert", "snap", "s1")
	if got := read(); got != "one" {
		t.Errorf("after reverting to s1 the disk says %q, want one", got)
	}
	h.OK("", "snapshot-revert", "snap", "s2")
	if got := read(); got != "two" {
		t.Errorf("after reverting to s2 the disk says %q, want two", got)
	}
	if st := h.status("snap"); st.State != "running" || st.QEMUPID != qemu {
		t.Errorf("after the reverts: %+v, want running in the same QEMU (%d)", st, qemu)
	}
	if uid := qemuUID(t, qemu); uid == "0" {
		t.Error("QEMU runs as root")
	}
	if cur := strings.TrimSpace(h.OK("", "snapshot-current", "snap", "--name")); cur != "s2" {
		t.Errorf("snapshot-current: %q, want s2", cur)
	}
	if list := h.OK("", "snapshot-list", "snap"); !strings.Contains(list, " s1 ") || !strings.Contains(list, " s2 ") || !strings.Contains(list, "running") {
		t.Errorf("snapshot-list:\n%s", list)
	}
	h.OK("", "snapshot-delete", "snap", "s1")
	if list := h.OK("", "snapshot-list", "snap"); strings.Contains(list, " s1 ") {
		t.Errorf("s1 is still listed after snapshot-delete:\n%s", list)
	}
	if out, err := exec.Command("qemu-img", "snapshot", "-U", "-l", disk).CombinedOutput(); err != nil || strings.Contains(string(out), " s1 ") || !strings.Contains(string(out), "s2") {
		t.Errorf("the disk's snapshots after deleting s1: %v\n%s", err, out)
	}

	// --disk-only, reverted once shut off.
	write("four")
	h.OK("", "snapshot-create-as", "snap", "d1", "--disk-only")
	write("five")
	h.fails("shut the domain off first", "snapshot-revert", "snap", "d1")
	h.OK("", "destroy", "snap")
	h.OK("", "snapshot-revert", "snap", "d1")
	h.boot(guest{name: "snap", devices: devices})
	if got := read(); got != "four" {
		t.Errorf("after reverting the shut-off domain to d1 the disk says %q, want four", got)
	}
	h.OK("", "destroy", "snap")

	// Raw and transient disks refuse, by name.
	raw := filepath.Join(h.top, "raw.img")
	os.WriteFile(raw, make([]byte, 1<<20), 0o600)
	h.OK(guest{name: "rawdisk", devices: `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='` + raw + `'/><target dev='vdc' bus='virtio'/></disk>`}.xml(), "define", "-")
	h.fails("disk vdc", "snapshot-create-as", "rawdisk", "x")
	h.OK(guest{name: "transient", devices: `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='` + disk + `'/><target dev='vdd' bus='virtio'/><transient/></disk>`}.xml(), "define", "-")
	h.fails("disk vdd is transient", "snapshot-create-as", "transient", "x")
	// A read-only disk is left out, as QEMU leaves it, and said by name.
	h.OK(guest{name: "withro", devices: devices + `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='` + raw + `'/><target dev='vdc' bus='virtio'/><readonly/></disk>`}.xml(), "define", "-")
	if _, errs, code := h.Run("", "snapshot-create-as", "withro", "ro"); code != 0 || !strings.Contains(errs, "disk vdc (read-only) is not in snapshot ro") {
		t.Errorf("a snapshot beside a read-only disk: exit %d, stderr %q", code, errs)
	}
}

// TestSaveRestoreNonRoot: run by a user other than root, save, restore,
// snapshot-create-as and snapshot-revert work, and QEMU runs as that user.
func TestSaveRestoreNonRoot(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs as root, to become another user")
	}
	const nobody = 65534
	h := newHost(t)
	os.Chmod(h.top, 0o755)
	for _, d := range []string{h.stateDir, h.runDir} {
		os.MkdirAll(d, 0o700)
		os.Chown(d, nobody, nobody)
	}
	as := func(args ...string) string {
		t.Helper()
		cmd := h.Command("", args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("minivirt %s as uid %d: %v: %s", strings.Join(args, " "), nobody, err, out)
		}
		return string(out)
	}
	work := filepath.Join(h.top, "nobody")
	os.Mkdir(work, 0o700)
	os.Chown(work, nobody, nobody)
	disk := filepath.Join(work, "data.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	os.Chown(disk, nobody, nobody)
	xml := filepath.Join(work, "nrs.xml")
	os.WriteFile(xml, []byte(guest{name: "nrs", devices: `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='` + disk + `'/><target dev='vda' bus='virtio'/></disk>`,
		script: `i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done &`}.xml()), 0o644)
	as("define", xml)
	as("start", "nrs")
	t.Cleanup(func() { h.Command("", "destroy", "nrs").Run() })
	h.waitLog("nrs", "tick 3\r\n", bootDeadline)
	as("snapshot-create-as", "nrs", "s1")
	file := filepath.Join(work, "nrs.save")
	as("save", "nrs", file)
	as("restore", file)
	from := lastTick(t, h, "nrs")
	h.waitLog("nrs", "tick "+strconv.Itoa(from+3)+"\r\n", time.Minute)
	as("snapshot-revert", "nrs", "s1")
	if uid := qemuUID(t, h.status("nrs").QEMUPID); uid != strconv.Itoa(nobody) {
		t.Errorf("QEMU runs as uid %s, want %d", uid, nobody)
	}
	if n := strings.Count(h.OK("", "log", "nrs"), "Linux version"); n != 1 {
		t.Errorf("the kernel booted %d times", n)
	}
	as("destroy", "nrs")
}
