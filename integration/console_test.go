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
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
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

// TestConsole drives `minivirt console` through a pty as a person would:
// a command typed into the guest's shell comes back, and Ctrl-] leaves.
func TestConsole(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.boot(guest{name: "con"})
	ptm, pts := openPTY(t)
	defer ptm.Close()
	cmd := h.Command("", "console", "con")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pts.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()

	var screen bytes.Buffer
	readUntil := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(screen.String(), want) {
			ptm.SetReadDeadline(deadline)
			n, err := ptm.Read(buf)
			screen.Write(buf[:n])
			if err != nil {
				t.Fatalf("waiting for %q: %v; screen:\n%s", want, err, screen.String())
			}
		}
	}
	readUntil("Escape character is ^]")
	marker := fmt.Sprintf("console-%d", time.Now().UnixNano())
	// The shell echoes what we type; the marker is printed with its parts
	// joined, so only the command's output matches.
	fmt.Fprintf(ptm, "echo %s-'ok'\r", marker)
	readUntil(marker + "-ok")
	ptm.Write([]byte{0x1d}) // Ctrl-]
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("console exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Ctrl-] did not end the console")
	}
	if st := h.status("con"); st.State != "running" {
		t.Errorf("leaving the console changed the domain: %+v", st)
	}
	if !strings.Contains(h.OK("", "log", "con"), marker+"-ok") {
		t.Error("the console session is not in the log")
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
