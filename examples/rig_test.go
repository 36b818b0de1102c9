// Package examples shows minivirt as a VM test rig: a Go test that boots the
// tiny guest and talks to it over a vmchannel (this file), and the same with
// `minivirt run` in shell (run.sh, run by TestRunScript).
package examples

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/rig"
)

var guestDir string

func TestMain(m *testing.M) {
	dir, cleanup, err := testenv.PrepareRig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "examples:", err)
		os.Exit(1)
	}
	guestDir = dir
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// tinyGuest is minivirt's test guest running script, then powering off.
func tinyGuest(script string) rig.Guest {
	return rig.Guest{
		Kernel:  filepath.Join(guestDir, "vmlinuz"),
		Initrd:  filepath.Join(guestDir, "initrd.gz"),
		Cmdline: "console=ttyS0 quiet " + rig.Script(script),
	}
}

// TestRequestReply boots the guest, which sends a request over a vmchannel;
// the test answers it, sees the reply on the guest's console, and waits for
// the guest to power off.
func TestRequestReply(t *testing.T) {
	b := rig.New(tinyGuest("minivirt-guest request " + rig.ChannelAddr(600) + " ping"))
	l, err := b.Listen(600)
	if err != nil {
		t.Fatal(err)
	}
	vm := rig.StartT(t, b)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := rig.Accept(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	req, err := io.ReadAll(conn) // the guest half-closes after its request
	if err != nil || string(req) != "ping" {
		t.Fatalf("request %q, %v", req, err)
	}
	conn.Write([]byte("pong"))
	conn.Close()

	if _, err := vm.WaitConsole(ctx, regexp.MustCompile(`^reply: pong$`)); err != nil {
		t.Fatal(err)
	}
	end, err := vm.Wait(ctx)
	if err != nil || end.State != "shut off" || end.Reason != "shutdown" {
		t.Fatalf("the guest ended %+v, %v; want a clean power-off", end, err)
	}
}

// TestFailingGuestShowsConsole runs a test whose guest fails (rigfail_test.go,
// built only with the rigfail tag) and checks that the test fails with the
// guest's console in its log.
func TestFailingGuestShowsConsole(t *testing.T) {
	cmd := exec.Command("go", "test", "-tags", "rigfail", "-count=1", "-run", "^TestGuestThatFails$", ".")
	cmd.Env = append(os.Environ(), "MINIVIRT_GUEST_DIR="+guestDir)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("the failing guest's test passed:\n%s", out)
	}
	for _, want := range []string{"--- FAIL: TestGuestThatFails", "console of rig-", "minivirt-guest: ready", "this guest is broken"} {
		if !bytes.Contains(out, []byte(want)) {
			t.Errorf("the failing test's output lacks %q:\n%s", want, out)
		}
	}
}

// TestRigLeavesNothing: after a test that used a rig, no process, socket or
// directory of the rig is left.
func TestRigLeavesNothing(t *testing.T) {
	var dir string
	fdsBefore := openFDs(t)
	t.Run("boot", func(t *testing.T) {
		b := rig.New(tinyGuest("sleep 600"))
		if _, err := b.Listen(600); err != nil {
			t.Fatal(err)
		}
		vm := rig.StartT(t, b)
		dir = filepath.Dir(vm.StateDir)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := vm.WaitConsole(ctx, regexp.MustCompile("minivirt-guest: ready")); err != nil {
			t.Fatal(err)
		}
		if len(processesUnder(dir)) == 0 {
			t.Fatal("no QEMU found for the running rig: the check below would prove nothing")
		}
	})
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the rig's directory %s outlived the test: %v", dir, err)
	}
	if left := processesUnder(dir); len(left) > 0 {
		t.Errorf("processes outlived the test: %v", left)
	}
	// The supervisor ran inside this process: its sockets must be closed too.
	if fds := openFDs(t); fds > fdsBefore {
		t.Errorf("the test process holds %d descriptors after the rig, %d before", fds, fdsBefore)
	}
}

func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// processesUnder lists live processes whose command line names dir.
func processesUnder(dir string) []int { return testenv.Processes(testenv.Mentioning(dir)) }

// TestRunScript runs run.sh: the same exchange in shell with `minivirt run`.
func TestRunScript(t *testing.T) {
	cmd := exec.Command("./run.sh")
	cmd.Env = append(os.Environ(), "MINIVIRT_GUEST_DIR="+guestDir, "PATH="+filepath.Dir(os.Getenv("MINIVIRT_BIN"))+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run.sh: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("reply: pong-from-the-host")) || !bytes.Contains(out, []byte("run.sh: ok")) {
		t.Errorf("run.sh output:\n%s", out)
	}
}
