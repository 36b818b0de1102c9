package integration

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/store"
)

// openPTY returns the controlling and the terminal side of a new pty.
func openPTY(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	// Non-blocking, so that read deadlines work on it (a hang guard).
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ptm, pts
}

// consoleSession is one `minivirt console` run on a pty, as a person runs it.
type consoleSession struct {
	t      *testing.T
	name   string
	ptm    *os.File
	screen bytes.Buffer
	exited chan error
}

// attachConsole runs `minivirt console` with args on a new pty.
func attachConsole(t *testing.T, h *host, name string, args ...string) *consoleSession {
	t.Helper()
	ptm, pts := openPTY(t)
	t.Cleanup(func() { ptm.Close() })
	cmd := h.Command("", append([]string{"console"}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pts.Close()
	s := &consoleSession{t: t, name: name, ptm: ptm, exited: make(chan error, 1)}
	go func() { s.exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	return s
}

// readUntil reads the console's screen until it shows want, and returns
// what it showed since the previous call.
func (s *consoleSession) readUntil(want string) string {
	s.t.Helper()
	from := s.screen.Len()
	buf := make([]byte, 4096)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(s.screen.String()[from:], want) {
		s.ptm.SetReadDeadline(deadline)
		n, err := s.ptm.Read(buf)
		s.screen.Write(buf[:n])
		if err != nil {
			s.t.Fatalf("%s: waiting for %q: %v; screen:\n%s", s.name, want, err, s.screen.String())
		}
	}
	return s.screen.String()[from:]
}

// typeLine types a line, as Enter ends it on a raw terminal.
func (s *consoleSession) typeLine(line string) { fmt.Fprintf(s.ptm, "%s\r", line) }

// leave types Ctrl-] and waits for the console to end.
func (s *consoleSession) leave() {
	s.t.Helper()
	s.ptm.Write([]byte{0x1d})
	select {
	case err := <-s.exited:
		if err != nil {
			s.t.Errorf("%s exited with %v", s.name, err)
		}
	case <-time.After(10 * time.Second):
		s.t.Fatalf("Ctrl-] did not end %s", s.name)
	}
}

// TestConsole drives `minivirt console` through ptys as people would, three
// at once: each sees the guest's output; the first holds the input and a
// second's typing reaches nobody; --force takes the input over; Ctrl-]
// leaves, and the log keeps everything.
func TestConsole(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.boot(guest{name: "con"})
	marker := fmt.Sprintf("console-%d", time.Now().UnixNano())
	// The shell echoes what is typed; each marker is printed with its parts
	// joined, so only a command's output matches.
	out := func(who string) string { return marker + "-" + who + "-ran" }
	run := func(who string) string { return "echo " + marker + "-" + who + "-'ran'" }

	first := attachConsole(t, h, "first", "con")
	if s := first.readUntil("Escape character is ^]"); strings.Contains(s, "Another console holds the input") {
		t.Errorf("the first console does not hold the input:\n%s", s)
	}
	second := attachConsole(t, h, "second", "con")
	second.readUntil("Another console holds the input")

	first.typeLine(run("first"))
	first.readUntil(out("first"))
	second.readUntil(out("first"))

	second.typeLine(run("second"))
	second.readUntil("this one shows the output only")
	// The guest reads its input in order: had the second console's line
	// reached it, its output would come before the next one's.
	first.typeLine(run("again"))
	if s := second.readUntil(out("again")); strings.Contains(s, out("second")) {
		t.Errorf("a console without the input typed into the guest:\n%s", s)
	}
	first.readUntil(out("again"))

	third := attachConsole(t, h, "third", "con", "--force")
	if s := third.readUntil("Escape character is ^]"); strings.Contains(s, "Another console holds the input") {
		t.Errorf("console --force did not take the input:\n%s", s)
	}
	first.readUntil("another console took the input over")
	third.typeLine(run("third"))
	for _, c := range []*consoleSession{first, second, third} {
		c.readUntil(out("third"))
	}
	first.typeLine(run("first-after"))
	first.readUntil("this one shows the output only")
	// A program on the console socket (socat, a script) takes the input
	// as it connects, while the consoles stay attached.
	if got, _ := h.exec("con", "echo by-'socket'", time.Minute); !strings.Contains(got, "by-socket") {
		t.Errorf("the console socket while consoles are attached: %q", got)
	}
	third.readUntil("another console took the input over")

	for _, c := range []*consoleSession{first, second, third} {
		c.leave()
	}
	if st := h.status("con"); st.State != "running" {
		t.Errorf("leaving the consoles changed the domain: %+v", st)
	}
	log := h.OK("", "log", "con")
	for _, who := range []string{"first", "again", "third"} {
		if !strings.Contains(log, out(who)) {
			t.Errorf("the log lacks %q", out(who))
		}
	}
	for _, who := range []string{"second", "first-after"} {
		if strings.Contains(log, out(who)) {
			t.Errorf("the log has %q, typed by a console without the input", out(who))
		}
	}
	h.OK("", "destroy", "con")
}

// TestStaleRecord: a runtime record whose pids are reused by other processes
// (same pid, another start time) or belong to another boot is not trusted.
func TestStaleRecord(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.OK(guest{name: "stale"}.xml(), "define", "-")
	self, err := proc.Self()
	if err != nil {
		t.Fatal(err)
	}
	reused := self
	reused.StartTime++ // our pid, but not the process that was recorded
	otherBoot := self
	otherBoot.BootID = "00000000-0000-0000-0000-000000000000"
	for _, ids := range [][2]proc.ID{{reused, reused}, {otherBoot, otherBoot}} {
		s, err := store.Open(h.stateDir, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		err = s.SetRuntime("stale", store.Runtime{State: store.StateRunning, Reason: "booted", QEMU: ids[0], Supervisor: ids[1]})
		s.Close()
		if err != nil {
			t.Fatal(err)
		}
		staleRunDir(t, h.runDirOf("stale"), ids[1]) // left by a host crash
		if out := h.OK("", "list"); strings.Contains(out, "stale") {
			t.Errorf("a record with reused pids is listed as running: %q", out)
		}
		if st := h.status("stale"); st.State != "shut off" || st.Reason != "crashed" {
			t.Errorf("status of a stale record: %+v", st)
		}
		if !exists(h.runDirOf("stale")) {
			t.Error("a read-only command removed the stale run directory")
		}
	}
	h.boot(guest{name: "stale"}) // start cleans the stale directory minivirt made
	h.OK("", "destroy", "stale")
	if exists(h.runDirOf("stale")) {
		t.Error("run directory left after destroy")
	}
}
