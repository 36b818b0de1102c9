package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/proc"
)

// qemusOf returns the live QEMU processes of one of this host's domains:
// those that run its uuid (generated at define, so no other test's).
func (h *host) qemusOf(name string) []int {
	uuid := h.uuid(name)
	found, err := proc.Find(func(argv []string) bool { return proc.HasArgs(argv, "-uuid", uuid) })
	if err != nil {
		h.t.Fatal(err)
	}
	var pids []int
	for _, p := range found {
		pids = append(pids, p.PID)
	}
	return pids
}

// blankDisk makes a 1 MiB disk of zeros, for idleFirmwareXML.
func (h *host) blankDisk() string {
	h.t.Helper()
	blank := filepath.Join(h.top, "blank.img")
	if err := os.WriteFile(blank, make([]byte, 1<<20), 0o644); err != nil {
		h.t.Fatal(err)
	}
	return blank
}

// recordMatches fails the test unless what status says of a domain is what
// runs: an active state names the one QEMU of the domain that lives, and a
// shut-off one has none. With unrecorded, a QEMU that status reports as
// unrecorded (its supervisor killed before recording it) counts too.
func (h *host) recordMatches(name, when string, unrecorded bool) bool {
	h.t.Helper()
	st := h.status(name)
	qemus := h.qemusOf(name)
	switch {
	case st.State == "shut off" && len(qemus) == 0:
		return true
	case st.State != "shut off" && len(qemus) == 1 && qemus[0] == st.QEMUPID && len(st.Unrecorded) == 0:
		return true
	case unrecorded && st.State != "shut off" && st.QEMUPID == 0 && slices.Equal(qemus, st.Unrecorded):
		return true
	}
	h.t.Errorf("%s: status says %s (%s), QEMU pid %d, supervisor %d; QEMUs of the domain that run: %v", when, st.State, st.Reason, st.QEMUPID, st.SupervisorPID, qemus)
	return false
}

// TestDestroyRacesStart: destroys and starts of one domain at once, round
// after round, always end with the record naming exactly the QEMU that
// runs (or none). A destroy that observed an older start once wrote
// "destroyed" over a newer start's record, hiding a running QEMU.
func TestDestroyRacesStart(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	blank := h.blankDisk()
	h.OK(idleFirmwareXML("race", blank), "define", "-")
	const rounds, destroys, starts = 200, 4, 2
	for r := 0; r < rounds; r++ {
		if h.status("race").State == "shut off" {
			h.OK("", "start", "race")
		}
		var wg sync.WaitGroup
		for i := 0; i < destroys+starts; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if i < destroys {
					h.Run("", "destroy", "race")
				} else {
					h.Run("", "start", "race")
				}
			}()
		}
		wg.Wait()
		if !h.recordMatches("race", fmt.Sprintf("round %d", r), false) {
			break
		}
	}
	h.Run("", "destroy", "race")
	if q := h.qemusOf("race"); len(q) != 0 {
		t.Errorf("after the last destroy, QEMUs of the domain run: %v", q)
	}
	h.OK("", "undefine", "race")
}

// TestSupervisorKilledMidStart: a supervisor killed at any moment of a
// start leaves no QEMU that minivirt does not know of: status names it,
// the next start refuses to run a second one, undefine refuses, and
// destroy ends it. A QEMU that no record names at all (its supervisor
// killed between spawning it and recording it) is found by its pid file.
func TestSupervisorKilledMidStart(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	blank := h.blankDisk()
	h.OK(idleFirmwareXML("mid", blank), "define", "-")
	idFile := filepath.Join(h.runDirOf("mid"), "supervisor.id")
	for r := 0; r < 12; r++ {
		start := h.Command("", "start", "mid")
		if err := start.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill the supervisor as soon as it shows itself, later each round.
		deadline := time.Now().Add(30 * time.Second)
		for !exists(idFile) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(r*15) * time.Millisecond) // where in the start it dies, not a wait for anything
		killed := 0
		if data, err := os.ReadFile(idFile); err == nil {
			if pid, err := strconv.Atoi(strings.Fields(string(data))[0]); err == nil {
				syscall.Kill(pid, syscall.SIGKILL)
				killed = pid
			}
		}
		start.Wait()
		if killed != 0 {
			waitDead(t, killed, 10*time.Second) // SIGKILL lands asynchronously
		}
		if !h.recordMatches("mid", fmt.Sprintf("round %d, after the kill", r), true) {
			break
		}
		if st := h.status("mid"); st.State != "shut off" {
			h.fails("already", "start", "mid")
			h.fails("destroy it first", "undefine", "mid")
		}
		h.Run("", "destroy", "mid")
		if !h.recordMatches("mid", fmt.Sprintf("round %d, after destroy", r), false) {
			break
		}
	}

	// A QEMU of the domain that no record names.
	uuid := h.uuid("mid")
	os.MkdirAll(h.runDirOf("mid"), 0o700)
	stray := exec.Command("qemu-system-x86_64", "-machine", "none", "-display", "none", "-nodefaults", "-S",
		"-uuid", uuid, "-pidfile", filepath.Join(h.runDirOf("mid"), "qemu.pid"))
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	reaped := make(chan struct{})
	go func() { stray.Wait(); close(reaped) }()
	var found []int
	for deadline := time.Now().Add(30 * time.Second); len(found) == 0 && time.Now().Before(deadline); {
		found = h.qemusOf("mid")
		time.Sleep(10 * time.Millisecond)
	}
	if st := h.status("mid"); st.State == "shut off" {
		t.Errorf("status with an unrecorded QEMU: %+v", st)
	}
	if out := h.OK("", "status", "mid"); !strings.Contains(out, "Unrecorded:  QEMU pid "+strconv.Itoa(stray.Process.Pid)) {
		t.Errorf("status does not name the unrecorded QEMU:\n%s", out)
	}
	h.fails("already", "start", "mid")
	h.fails("destroy it first", "undefine", "mid")
	h.OK("", "destroy", "mid")
	select {
	case <-reaped:
	case <-time.After(30 * time.Second):
		t.Error("destroy left the unrecorded QEMU running")
	}
	h.recordMatches("mid", "after destroying the unrecorded QEMU", false)
	// The directory this test made for it is the test's to remove.
	os.Remove(filepath.Join(h.runDirOf("mid"), "qemu.pid"))
	os.Remove(h.runDirOf("mid"))
	h.OK("", "start", "mid")
	h.OK("", "destroy", "mid")
}

// TestNothingInherited: descriptors and environment variables of whoever
// runs minivirt reach neither the supervisor nor QEMU. A descriptor on /
// would take a confined QEMU out of its chroot.
func TestNothingInherited(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	secret := filepath.Join(h.top, "secret")
	os.WriteFile(secret, []byte("secret\n"), 0o600)
	h.OK(guest{name: "fds"}.xml(), "define", "-")
	f, err := os.Open(secret)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	root, err := os.Open("/")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	cmd := h.Command("", "start", "fds")
	cmd.ExtraFiles = []*os.File{f, root} // fds 3 and 4 of minivirt start
	cmd.Env = append(cmd.Env, "FOO_SECRET=leaked")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("start: %v: %s", err, out)
	}
	st := h.status("fds")
	for what, pid := range map[string]int{"QEMU": st.QEMUPID, "supervisor": st.SupervisorPID} {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if target == secret || target == "/" {
				t.Errorf("%s (pid %d) holds fd %s on %s", what, pid, fd.Name(), target)
			}
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(env), "FOO_SECRET") {
			t.Errorf("%s (pid %d) has the caller's FOO_SECRET in its environment", what, pid)
		}
		if what == "QEMU" {
			vars := strings.Split(strings.TrimSuffix(string(env), "\x00"), "\x00")
			slices.Sort(vars)
			if want := []string{"LANG=C", "PATH=" + proc.SafePath}; !slices.Equal(vars, want) {
				t.Errorf("QEMU's environment is %q; want %q", vars, want)
			}
		}
	}
	h.OK("", "destroy", "fds")
}

// TestShutdownStates: shutdown of a paused domain is refused (its guest
// cannot act on the button, and the press would power it off at the next
// resume), and a guest that ignores the button is running again after the
// timeout, not "in shutdown" for ever.
func TestShutdownStates(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.boot(guest{name: "p"})
	h.OK("", "suspend", "p")
	h.fails("is paused", "shutdown", "p", "--timeout", "5s")
	if st := h.status("p"); st.State != "paused" {
		t.Errorf("after a refused shutdown: %+v", st)
	}
	h.OK("", "resume", "p")
	// The guest would power off now if the button had been pressed.
	h.OK("", "qmp", "p", `{"execute":"query-status"}`)
	if st := h.status("p"); st.State != "running" {
		t.Errorf("after resume: %+v", st)
	}
	h.exec("p", "killall minivirt-guest", time.Minute) // deaf to the button from now on
	h.fails("did not shut off within 2s", "shutdown", "p", "--timeout", "2s")
	st := h.waitState("p", "running", 30*time.Second)
	if !strings.Contains(st.Detail, "did not power off") {
		t.Errorf("after an ignored button: %+v", st)
	}
	h.OK("", "destroy", "p")
}

// TestSupervisorNotAnswering: while the supervisor cannot answer, the verbs
// that show what only it knows fail with one line, never print zeros.
func TestSupervisorNotAnswering(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	h.boot(guest{name: "mute", devices: vmchannelXML(600, svc.path)})
	st := h.status("mute")
	syscall.Kill(st.SupervisorPID, syscall.SIGSTOP)
	defer syscall.Kill(st.SupervisorPID, syscall.SIGCONT)
	for _, verb := range [][]string{{"vmchannel", "list", "mute"}, {"port", "list", "mute"}, {"domifaddr", "mute"}} {
		out, errs, code := h.Run("", verb...)
		if code == 0 || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, "does not answer") {
			t.Errorf("%v with a stopped supervisor: exit %d, stdout %q, stderr %q", verb, code, out, errs)
		}
	}
	syscall.Kill(st.SupervisorPID, syscall.SIGCONT)
	var items []struct{ Port int }
	json.Unmarshal([]byte(h.OK("", "vmchannel", "list", "mute", "-o", "json")), &items)
	if len(items) != 1 {
		t.Errorf("after SIGCONT: %+v", items)
	}
	h.OK("", "destroy", "mute")
}

// TestSupervisorKilledMidShutdown: a guest that powers off after its
// supervisor died in the middle of a shutdown leaves no QEMU behind, and
// its state says shut off (shutdown), not "in shutdown" for ever.
func TestSupervisorKilledMidShutdown(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	// A guest slow to act on the button: it powers off a few seconds on.
	h.boot(guest{name: "half", script: "killall minivirt-guest; (sleep 6; poweroff -f) </dev/null >/dev/null 2>&1 &"})
	h.waitLog("half", "run exited", bootDeadline)
	st := h.status("half")
	shutdown := h.Command("", "shutdown", "half", "--timeout", "3m")
	var stderr strings.Builder
	shutdown.Stderr = &stderr
	if err := shutdown.Start(); err != nil {
		t.Fatal(err)
	}
	h.waitState("half", "in shutdown", time.Minute)
	// The store has it too (the supervisor records it before it presses
	// the button); only then is the supervisor killed.
	h.waitStored("half", "in shutdown", time.Minute)
	syscall.Kill(st.SupervisorPID, syscall.SIGKILL)
	waitDead(t, st.SupervisorPID, 10*time.Second)
	waitDead(t, st.QEMUPID, 2*time.Minute)
	// Its exit status depends on whether the reply came before the kill.
	shutdown.Wait()
	t.Logf("shutdown, whose supervisor died on the way: %s", stderr.String())
	after := h.status("half")
	if after.State != "shut off" || after.Reason != "shutdown" {
		t.Errorf("after the guest powered off unsupervised: %+v", after)
	}
	h.OK("", "start", "half")
	h.OK("", "destroy", "half")
}

// TestUnwritableDatabase: a guest that powers off while the state database
// cannot be written is shown shut off at once, with the record said to be
// stale, and recorded as soon as the database can be written again.
func TestUnwritableDatabase(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs as root (`make test` as root): chattr +i needs it")
	}
	h := newHost(t)
	h.boot(guest{name: "ro", script: "sleep 3; poweroff -f"})
	db := filepath.Join(h.stateDir, "minivirt.db")
	if out, err := exec.Command("chattr", "+i", db).CombinedOutput(); err != nil {
		t.Fatalf("chattr +i %s: %v: %s (the state directory's filesystem must support it)", db, err, out)
	}
	defer exec.Command("chattr", "-i", db).Run()
	st := h.status("ro")
	waitDead(t, st.QEMUPID, time.Minute)
	var seen status
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if seen = h.status("ro"); seen.State == "shut off" {
			break
		}
	}
	out := h.OK("", "status", "ro")
	if seen.State != "shut off" || seen.Reason != "shutdown" || !strings.Contains(out, "Record:      stale") {
		t.Errorf("while the database is read-only: %+v\n%s", seen, out)
	}
	if list := h.OK("", "list", "--all"); !strings.Contains(list, "shut off") {
		t.Errorf("list while the database is read-only:\n%s", list)
	}
	if out, err := exec.Command("chattr", "-i", db).CombinedOutput(); err != nil {
		t.Fatalf("chattr -i: %v: %s", err, out)
	}
	waitDead(t, st.SupervisorPID, time.Minute) // it exits once its record landed
	if out := h.OK("", "status", "ro"); strings.Contains(out, "stale") || !strings.Contains(out, "shut off (shutdown)") {
		t.Errorf("after the database is writable again:\n%s", out)
	}
}

// TestOwnUIDPerDomain: as root, each domain's QEMU runs as a uid and gid of
// its own, so one domain's QEMU can neither signal another's nor reach its
// sockets.
func TestOwnUIDPerDomain(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs as root (`make test` as root): QEMU changes uid only then")
	}
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	h.boot(guest{name: "a", network: "slirp", devices: vmchannelXML(600, svc.path)})
	h.boot(guest{name: "b", network: "slirp", devices: vmchannelXML(600, svc.path)})
	ids := map[string][2]int{}
	for _, name := range []string{"a", "b"} {
		pid := h.status(name).QEMUPID
		real, eff, err := proc.UIDs(pid)
		if err != nil {
			t.Fatal(err)
		}
		if real != eff || real < 2_000_000_000 {
			t.Errorf("%s: QEMU runs as uid %d/%d; want its own, from 2000000000 up", name, real, eff)
		}
		ids[name] = [2]int{real, pid}
	}
	if ids["a"][0] == ids["b"][0] {
		t.Fatalf("both QEMUs run as uid %d", ids["a"][0])
	}
	as := func(uid int, args ...string) error {
		u := strconv.Itoa(uid)
		return exec.Command("setpriv", append([]string{"--reuid", u, "--regid", u, "--clear-groups", "--"}, args...)...).Run()
	}
	// As a's QEMU: signal b's QEMU, and connect to b's relay socket.
	if err := as(ids["a"][0], "kill", "-0", strconv.Itoa(ids["b"][1])); err == nil {
		t.Error("a's uid can signal b's QEMU")
	}
	if err := as(ids["a"][0], "kill", "-0", strconv.Itoa(ids["a"][1])); err != nil {
		t.Errorf("a's uid cannot signal its own QEMU (the check itself is broken): %v", err)
	}
	relayB := filepath.Join(h.runDirOf("b"), "relay.sock")
	if err := as(ids["a"][0], "socat", "-u", "OPEN:/dev/null", "UNIX-CONNECT:"+relayB); err == nil {
		t.Error("a's uid can connect to b's relay socket")
	}
	h.OK("", "destroy", "a")
	h.OK("", "destroy", "b")
}

// TestConcurrentLiveChanges: many live adds at once are all listed and all
// reached by the guest, removes at once leave nothing listed and nothing
// reachable, and a live add beside a guestfwd <channel> keeps that channel
// served (the added channel was once taken to be the last one listed,
// which was the guestfwd one, and it stopped being served).
func TestConcurrentLiveChanges(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	gfwd := `<channel type='unix'><source mode='connect' path='` + svc.path + `'/><target type='guestfwd' address='10.0.2.4' port='600'/></channel>`
	h.boot(guest{name: "many", network: "netstack", devices: gfwd})
	const n = 40
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.OK("", "vmchannel", "add", "many", "--port", strconv.Itoa(700+i), "--path", svc.path, "--live")
		}()
	}
	wg.Wait()
	listed := func() map[int]bool {
		var items []struct {
			Port int  `json:"port"`
			Live bool `json:"live"`
		}
		json.Unmarshal([]byte(h.OK("", "vmchannel", "list", "many", "-o", "json")), &items)
		ports := map[int]bool{}
		for _, it := range items {
			ports[it.Port] = true
		}
		return ports
	}
	ports := listed()
	for i := 0; i < n; i++ {
		if !ports[700+i] {
			t.Errorf("port %d was added (exit 0) but is not listed", 700+i)
		}
	}
	if !ports[600] {
		t.Error("the guestfwd channel on port 600 is no longer listed")
	}
	// The guest reaches every listed port, the guestfwd one included.
	script := "ok=0; for p in 600"
	for i := 0; i < n; i++ {
		script += " " + strconv.Itoa(700+i)
	}
	script += "; do minivirt-guest request 10.0.2.4:$p x >/dev/null && ok=$((ok+1)); done; echo reached $ok"
	if out, _ := h.exec("many", script, 3*time.Minute); !strings.Contains(out, fmt.Sprintf("reached %d", n+1)) {
		t.Errorf("after %d live adds: %s", n, out)
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.OK("", "vmchannel", "remove", "many", "--port", strconv.Itoa(700+i), "--live")
		}()
	}
	wg.Wait()
	if ports := listed(); len(ports) != 1 || !ports[600] {
		t.Errorf("after removing them all, listed: %v", ports)
	}
	script = strings.Replace(script, "for p in 600", "for p in", 1)
	if out, _ := h.exec("many", script, 3*time.Minute); !strings.Contains(out, "reached 0") {
		t.Errorf("after %d live removes the guest still reaches some: %s", n, out)
	}
	h.OK("", "destroy", "many")
}

// cpuTicks is the user and system time pid has used, in clock ticks.
func cpuTicks(pid int) uint64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	return utime + stime
}

// TestGuestFlood: a guest that sends 300,000 DHCP messages from random MAC
// addresses and then a SYN flood cannot make the supervisor hold more than
// a bounded amount of memory or keep it busy afterwards; status answers
// throughout, and domifaddr shows a bounded list. The second release's
// supervisor grew to 1.46 GB and 1.7 cores, and every control call timed
// out.
func TestGuestFlood(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	h.boot(guest{name: "flood", network: "netstack", cmdline: "minivirt.dhcp", devices: vmchannelXML(600, svc.path)})
	sup := h.status("flood").SupervisorPID
	rssBefore := rssOf(sup)
	done := make(chan struct{})
	var out string
	go func() {
		defer close(done)
		out, _ = h.exec("flood", "minivirt-guest dhcp-flood 300000 && minivirt-guest syn-flood 100000 10.0.2.4:600 && minivirt-guest syn-flood 100000 10.0.2.4:601 && echo flooded", 10*time.Minute)
	}()
	// status answers during the flood, each call within its deadline.
	var slowest time.Duration
	calls := 0
	for flooding := true; flooding; {
		select {
		case <-done:
			flooding = false
		case <-time.After(200 * time.Millisecond):
		}
		began := time.Now()
		cmd := h.Command("", "status", "flood", "-o", "json")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		timer := time.AfterFunc(5*time.Second, func() { cmd.Process.Kill() })
		err := cmd.Wait()
		timer.Stop()
		if err != nil {
			t.Fatalf("status during the flood, after %d calls: %v (%s)", calls, err, time.Since(began))
		}
		calls++
		slowest = max(slowest, time.Since(began))
	}
	if !strings.Contains(out, "flooded") {
		t.Fatalf("the guest's flood did not finish: %s", out)
	}
	rss := rssOf(sup)
	t0 := cpuTicks(sup)
	time.Sleep(2 * time.Second) // the span over which CPU use is measured
	busy := float64(cpuTicks(sup)-t0) / 100 / 2
	t.Logf("%d status calls during the flood, slowest %s (with the CLI's own start); supervisor RSS %d MB before, %d MB after; %.2f cores in the 2 s after",
		calls, slowest, rssBefore>>20, rss>>20, busy)
	if rss > rssBefore+128<<20 {
		t.Errorf("the supervisor grew from %d MB to %d MB during the flood", rssBefore>>20, rss>>20)
	}
	if busy > 0.5 {
		t.Errorf("the supervisor used %.2f cores after the flood had ended", busy)
	}
	var addrs []struct{ Address string }
	json.Unmarshal([]byte(h.OK("", "domifaddr", "flood", "-o", "json")), &addrs)
	if len(addrs) == 0 || len(addrs) > 4 {
		t.Errorf("domifaddr after the flood lists %d addresses; want 1 to 4", len(addrs))
	}
	// The channel still serves the guest.
	if out, rc := h.exec("flood", "minivirt-guest request 10.0.2.4:600 after", time.Minute); rc != 0 || !strings.Contains(out, "reply: after") {
		t.Errorf("the vmchannel after the flood: exit %d, %q", rc, out)
	}
	h.OK("", "destroy", "flood")
}
