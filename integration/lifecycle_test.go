package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/launcher"
)

// TestLifecycle walks one guest through every verb: start, the console log,
// refusals while running, qmp, suspend/resume, reboot, ACPI shutdown.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.OK(guest{name: "life"}.xml(), "define", "-")
	out, errs, code := h.Run("", "start", "life")
	if code != 0 || out != "Domain life started\n" {
		t.Fatalf("start: exit %d, %q, %q", code, out, errs)
	}
	kvm, _ := launcher.DetectKVM(os.Getenv)
	if !kvm && !strings.Contains(errs, "running under TCG") {
		t.Errorf("start under TCG gave no warning: %q", errs)
	}
	st := h.status("life")
	if st.State != "running" || st.Reason != "booted" || !st.Supervised || !alive(st.QEMUPID) || !alive(st.SupervisorPID) {
		t.Fatalf("after start: %+v", st)
	}
	if want := map[bool]string{true: "kvm", false: "tcg"}[kvm]; st.Accel != want {
		t.Errorf("accel %q; want %q", st.Accel, want)
	}
	// Run directory and sockets: 0700 and 0600.
	fi, err := os.Stat(h.runDirOf("life"))
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("run directory: %v, %v", fi, err)
	}
	socks, _ := filepath.Glob(filepath.Join(h.runDirOf("life"), "*.sock"))
	for _, s := range socks {
		if fi, err := os.Stat(s); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("socket %s mode %v", s, fi.Mode())
		}
	}
	if len(socks) < 3 {
		t.Errorf("sockets in the run directory: %v", socks)
	}

	log := h.waitLog("life", readyLine, bootDeadline)
	if !strings.Contains(log, "Linux version") {
		t.Errorf("the console log lacks the kernel's boot lines:\n%s", log)
	}
	if out := h.OK("", "log", "life"); !strings.Contains(out, "Linux version") || !strings.Contains(out, "minivirt-guest: ready") {
		t.Errorf("minivirt log: %q", out)
	}

	h.fails("already running", "start", "life")
	h.fails("destroy it first", "undefine", "life")
	if out := h.OK("", "list"); !strings.Contains(out, "life") || !strings.Contains(out, "running") {
		t.Errorf("list: %q", out)
	}

	var reply struct {
		Return struct{ Status string }
	}
	if err := json.Unmarshal([]byte(h.OK("", "qmp", "life", `{"execute":"query-status"}`)), &reply); err != nil || reply.Return.Status != "running" {
		t.Errorf("qmp query-status: %+v, %v", reply, err)
	}
	h.fails("not a QMP command", "qmp", "life", "nonsense")

	// Several commands on one domain at once all answer (they share one
	// QMP monitor through the supervisor).
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		for _, args := range [][]string{{"status", "life", "-o", "json"}, {"qmp", "life", `{"execute":"query-status"}`}, {"vmchannel", "list", "life"}, {"list"}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := h.Command("", args...)
				if out, err := c.CombinedOutput(); err != nil {
					t.Errorf("concurrent %v: %v: %s", args, err, out)
				}
			}()
		}
	}
	wg.Wait()

	h.OK("", "suspend", "life")
	if st := h.status("life"); st.State != "paused" {
		t.Errorf("after suspend: %+v", st)
	}
	h.OK(`{"execute":"query-status"}`, "qmp", "life", `{"execute":"query-status"}`)
	h.OK("", "resume", "life")
	if st := h.status("life"); st.State != "running" {
		t.Errorf("after resume: %+v", st)
	}

	// reboot goes through the ACPI power button: the guest boots again.
	h.OK("", "reboot", "life")
	h.waitLogCount("life", readyLine, 2, bootDeadline)
	if st := h.status("life"); st.State != "running" || st.QEMUPID == 0 {
		t.Errorf("after reboot: %+v", st)
	}

	out = h.OK("", "shutdown", "life", "--timeout", "60s")
	if out != "Domain life shut off\n" {
		t.Errorf("shutdown printed %q", out)
	}
	st = h.status("life")
	if st.State != "shut off" || st.Reason != "shutdown" {
		t.Errorf("after shutdown: %+v", st)
	}
	if exists(h.runDirOf("life")) {
		t.Error("the run directory outlived the domain")
	}
	if !strings.Contains(h.OK("", "log", "life"), "power button pressed") {
		t.Error("the guest did not see the power button")
	}
	h.fails("not running", "shutdown", "life")
	h.OK("", "undefine", "life")
}

func TestDestroyAndRestart(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.boot(guest{name: "d"})
	st := h.status("d")
	// log -f follows the console and ends by itself when the domain stops.
	follow := h.Command("", "log", "-f", "d")
	var followed strings.Builder
	follow.Stdout = &followed
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	followDone := make(chan error, 1)
	go func() { followDone <- follow.Wait() }()
	if out := h.OK("", "destroy", "d"); out != "Domain d destroyed\n" {
		t.Errorf("destroy printed %q", out)
	}
	if alive(st.QEMUPID) || alive(st.SupervisorPID) {
		t.Error("QEMU or the supervisor outlived destroy")
	}
	select {
	case err := <-followDone:
		if err != nil || !strings.Contains(followed.String(), readyLine) {
			t.Errorf("log -f: %v, %q", err, followed.String())
		}
	case <-time.After(10 * time.Second):
		follow.Process.Kill()
		t.Error("log -f did not end when the domain stopped")
	}
	if st := h.status("d"); st.State != "shut off" || st.Reason != "destroyed" {
		t.Errorf("after destroy: %+v", st)
	}
	if exists(h.runDirOf("d")) {
		t.Error("run directory left after destroy")
	}
	h.fails("not running", "destroy", "d")
	// stop on a guest that honours the power button shuts it down.
	h.boot(guest{name: "d"})
	if out := h.OK("", "stop", "d", "--timeout", "60s"); out != "Domain d shut off\n" {
		t.Errorf("stop printed %q", out)
	}
}

// TestStopIgnored: a guest that ignores the power button is shut down by
// stop (destroy after the timeout) while shutdown alone fails.
func TestStopIgnored(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.boot(guest{name: "deaf", script: "killall minivirt-guest"})
	h.waitLog("deaf", "run exited", 30*time.Second)
	h.fails("did not shut off within 2s", "shutdown", "deaf", "--timeout", "2s")
	out := h.OK("", "stop", "deaf", "--timeout", "2s")
	if !strings.Contains(out, "destroyed") {
		t.Errorf("stop printed %q", out)
	}
	if st := h.status("deaf"); st.State != "shut off" {
		t.Errorf("after stop: %+v", st)
	}
}

// TestQEMUKilled: kill -9 of QEMU is recorded with a reason, cleaned up, and
// the domain starts again.
func TestQEMUKilled(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.boot(guest{name: "k"})
	st := h.status("k")
	syscall.Kill(st.QEMUPID, syscall.SIGKILL)
	waitDead(t, st.SupervisorPID, 30*time.Second)
	after := h.status("k")
	if after.State != "shut off" || after.Reason != "crashed" || !strings.Contains(after.Detail, "killed") {
		t.Errorf("after kill -9 of QEMU: %+v", after)
	}
	if exists(h.runDirOf("k")) {
		t.Error("run directory left after QEMU died")
	}
	h.boot(guest{name: "k"})
	h.OK("", "destroy", "k")
}

// TestSupervisorKilled: with the supervisor gone, status tells the truth
// from the pids, verbs that need it say so, and destroy still works.
func TestSupervisorKilled(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.boot(guest{name: "u"})
	st := h.status("u")
	syscall.Kill(st.SupervisorPID, syscall.SIGKILL)
	waitDead(t, st.SupervisorPID, 10*time.Second)
	if !alive(st.QEMUPID) {
		t.Fatal("QEMU died with its supervisor")
	}
	u := h.status("u")
	if u.State != "running" || u.Supervised || u.QEMUPID != st.QEMUPID || u.SupervisorPID != 0 {
		t.Errorf("status without a supervisor: %+v", u)
	}
	h.fails("unsupervised", "suspend", "u")
	h.fails("unsupervised", "shutdown", "u")
	h.OK("", "destroy", "u")
	if alive(st.QEMUPID) {
		t.Error("destroy left QEMU running")
	}
	if st := h.status("u"); st.State != "shut off" || st.Reason != "destroyed" {
		t.Errorf("after destroy: %+v", st)
	}
	if exists(h.runDirOf("u")) {
		t.Error("run directory left")
	}

	// Both gone (as after a host crash): the next command reconciles.
	h.boot(guest{name: "u"})
	st = h.status("u")
	syscall.Kill(st.SupervisorPID, syscall.SIGKILL)
	waitDead(t, st.SupervisorPID, 10*time.Second)
	syscall.Kill(st.QEMUPID, syscall.SIGKILL)
	waitDead(t, st.QEMUPID, 10*time.Second)
	if out := h.OK("", "list", "--all"); !strings.Contains(out, "shut off") {
		t.Errorf("list after both died: %q", out)
	}
	if st := h.status("u"); st.State != "shut off" || st.Reason != "crashed" {
		t.Errorf("status after both died: %+v", st)
	}
	if !exists(h.runDirOf("u")) {
		t.Error("a read-only command removed the run directory") // only start and destroy may
	}
	h.boot(guest{name: "u"}) // cleans the stale directory minivirt made
	h.OK("", "destroy", "u")
	if exists(h.runDirOf("u")) {
		t.Error("run directory left after destroy")
	}
}

// TestStartFailure: QEMU refuses to start; start says so in QEMU's words and
// leaves no process, socket, directory or running record.
func TestStartFailure(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	empty := filepath.Join(h.top, "empty-kernel")
	os.WriteFile(empty, nil, 0o644)
	xml := strings.Replace(guest{name: "bad"}.xml(), filepath.Join(guestDir, "vmlinuz"), empty, 1)
	h.OK(xml, "define", "-")
	_, errs, code := h.Run("", "start", "bad")
	if code == 0 || !strings.HasPrefix(errs, "minivirt: start bad: QEMU exited with status 1") || !strings.Contains(errs, "could not load kernel") {
		t.Errorf("start with an empty kernel: exit %d, %q", code, errs)
	}
	if strings.Count(errs, "\n") != 1 {
		t.Errorf("start failure is not one line: %q", errs)
	}
	if exists(h.runDirOf("bad")) {
		t.Error("run directory left after a failed start")
	}
	if st := h.status("bad"); st.State != "shut off" {
		t.Errorf("state after a failed start: %+v", st)
	}
	if left := h.processes(); len(left) > 0 {
		t.Errorf("processes left after a failed start: %v", left)
	}
}

// TestPanic: a guest kernel panic reaches the supervisor through pvpanic
// and on_crash decides: destroy records a crash.
func TestPanic(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.boot(guest{name: "p", script: "sleep 1; echo c > /proc/sysrq-trigger"})
	st := h.waitState("p", "shut off", 60*time.Second)
	if st.Reason != "crashed" || !strings.Contains(st.Detail, "panicked") {
		t.Errorf("after a guest panic: %+v", st)
	}
	// on_crash=preserve keeps the guest for inspection, state crashed.
	g := guest{name: "p", script: "sleep 1; echo c > /proc/sysrq-trigger", top: "<on_crash>preserve</on_crash>"}
	h.boot(g)
	h.waitState("p", "crashed", 60*time.Second)
	h.OK("", "destroy", "p")
}
