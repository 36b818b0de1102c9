package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/qmp/qmptest"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// The test binary doubles as a fake QEMU: a domain names it as its
// <emulator>, the supervisor runs it with QEMU's argv, and it serves QMP on
// the monitor descriptor it inherits. The real QEMU cannot be made to send a
// 1 MiB reply to order, never answer one command, or drop its monitor, so
// those cases use this fake; everything else in them is the real engine and
// supervisor. MINIVIRT_FAKE_QEMU picks the fake's behaviour:
//
//	normal: answers every command; system_powerdown leads to a SHUTDOWN event
//	drop:   after cont, closes the monitor and stops listening for a new one
const fakeEnv = "MINIVIRT_FAKE_QEMU"

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeEnv); mode != "" {
		os.Exit(fakeQEMU(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakeQEMU serves QMP on the fd of "-chardev socket,id=monitor,fd=N".
func fakeQEMU(mode string, args []string) int {
	if mode == "exit" { // a QEMU that refuses its command line
		fmt.Fprintln(os.Stderr, "fake QEMU: refusing to start")
		return 3
	}
	fd := -1
	for i, a := range args {
		if a == "-chardev" && i+1 < len(args) && strings.HasPrefix(args[i+1], "socket,id=monitor,fd=") {
			rest := strings.TrimPrefix(args[i+1], "socket,id=monitor,fd=")
			fd, _ = strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
		}
	}
	l, err := net.FileListener(os.NewFile(uintptr(fd), "monitor"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake QEMU: no monitor:", err)
		return 1
	}
	for {
		c, err := l.Accept()
		if err != nil && mode == "drop" {
			select {} // a QEMU whose monitor is gone: only SIGKILL ends it
		}
		if err != nil {
			return 1
		}
		if quit := serveQMP(c, mode, l); quit {
			return 0
		}
	}
}

// serveQMP answers one monitor client; it reports whether QEMU must exit.
func serveQMP(c net.Conn, mode string, l net.Listener) (quit bool) {
	defer c.Close()
	qmptest.Serve(c, func(cmd string, s qmptest.Session) bool {
		switch cmd {
		case "hang": // never answered
		case "query-qmp-schema":
			s.Reply(`[{"blob": "` + strings.Repeat("x", 1<<20) + `"}]`)
		case "query-status":
			s.Reply(`{"running": true, "status": "running"}`)
		case "system_powerdown":
			s.Reply(`{}`)
			s.Event("SHUTDOWN", `{"guest": true, "reason": "guest-shutdown"}`)
			s.Event("STOP", `{}`)
		case "quit":
			s.Reply(`{}`)
			s.Event("SHUTDOWN", `{"guest": false, "reason": "host-qmp-quit"}`)
			quit = true
			return false
		case "cont":
			s.Reply(`{}`)
			s.Event("RESUME", `{}`)
			if mode == "drop" {
				l.Close()
				return false
			}
		default:
			s.Reply(`{}`)
		}
		return true
	})
	return quit
}

// fakeDomain defines a domain whose emulator is the fake QEMU, with extra
// <devices> content, and starts it.
func fakeDomain(t *testing.T, mode string, devices ...string) (*Manager, string) {
	t.Helper()
	m := defineFake(t, mode, devices...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.Start(ctx, "fake", StartOptions{}); err != nil {
		t.Fatal(err)
	}
	return m, "fake"
}

// defineFake defines the fake domain "fake" in a fresh state.
func defineFake(t *testing.T, mode string, devices ...string) *Manager {
	t.Helper()
	t.Setenv(fakeEnv, mode)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "mvmgr-") // socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	m := &Manager{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), LockTimeout: 10 * time.Second}
	done := make(chan struct{})
	m.Spawn = InProcess{
		Self:   self,
		Log:    func(string) (io.WriteCloser, error) { return nopCloser{testWriter{t}}, nil },
		OnExit: func(string, error) { close(done) },
	}
	t.Cleanup(func() {
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the supervisor did not end")
		}
	})
	// QEMU gets no variable of the caller's: the fake's mode reaches it as
	// a <qemu:commandline> variable, as a user's would.
	xml := `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>fake</name><memory unit='MiB'>64</memory>
<os><kernel>` + self + `</kernel></os><devices><emulator>` + self + `</emulator>` + strings.Join(devices, "") + `</devices>
<qemu:commandline><qemu:env name='` + fakeEnv + `' value='` + mode + `'/></qemu:commandline></domain>`
	d, err := domain.Parse(strings.NewReader(xml))
	if err == nil {
		err = d.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Define(d); err != nil {
		t.Fatal(err)
	}
	return m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func deadline(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// A reply of 1 MiB once ended go-qemu's reader for good: the supervisor
// missed the guest's SHUTDOWN and status said running forever.
func TestLargeReplyKeepsTheSupervisorSeeing(t *testing.T) {
	m, name := fakeDomain(t, "normal")
	ctx := deadline(t, 30*time.Second)
	out, err := m.QMP(ctx, name, []byte(`{"execute":"query-qmp-schema"}`))
	if err != nil {
		t.Fatalf("query-qmp-schema: %v", err)
	}
	if len(out) < 1<<20 {
		t.Fatalf("reply of %d bytes, want over 1 MiB", len(out))
	}
	if err := m.Shutdown(ctx, name, 20*time.Second); err != nil {
		t.Fatalf("shutdown after a large reply: %v", err)
	}
	st, err := m.Status(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != "shut off" || st.Reason != "shutdown" {
		t.Errorf("status = %s (%s) %s; want shut off (shutdown)", st.State, st.Reason, st.Detail)
	}
}

// A command that never gets an answer once closed the monitor.
func TestUnansweredCommandKeepsTheSupervisorSeeing(t *testing.T) {
	m, name := fakeDomain(t, "normal")
	ctx := deadline(t, 30*time.Second)
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := m.QMP(short, name, []byte(`{"execute":"hang"}`)); err == nil {
		t.Fatal("a command that is never answered succeeded")
	}
	st, err := m.Status(ctx, name)
	if err != nil || st.Live == nil || st.Live.MonitorLost {
		t.Fatalf("after an unanswered command: %+v, %v", st.Live, err)
	}
	if err := m.Shutdown(ctx, name, 20*time.Second); err != nil {
		t.Fatalf("shutdown after an unanswered command: %v", err)
	}
	final, err := m.Wait(ctx, name)
	if err != nil || final.State != "shut off" || final.Reason != "shutdown" {
		t.Errorf("final = %+v, %v; want shut off (shutdown)", final, err)
	}
}

// A monitor that is gone for good is reported, shutdown says so instead of
// failing with a parser's words, and stop falls back to destroy.
func TestLostMonitorIsReported(t *testing.T) {
	m, name := fakeDomain(t, "drop")
	ctx := deadline(t, 30*time.Second)
	var st Status
	for {
		var err error
		if st, err = m.Status(ctx, name); err != nil {
			t.Fatal(err)
		}
		if st.Live != nil && st.Live.MonitorLost {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("status never said the monitor was lost: %+v", st.Live)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if st.State != "running" || !strings.Contains(st.Detail, "monitor lost") {
		t.Errorf("status = %s (%s) %q; want running with the monitor lost in the detail", st.State, st.Reason, st.Detail)
	}
	err := m.Shutdown(ctx, name, 5*time.Second)
	if !errors.Is(err, supervisor.ErrMonitorLost) || !strings.Contains(err.Error(), "minivirt destroy") {
		t.Fatalf("shutdown with the monitor lost: %v", err)
	}
	destroyed, note, err := m.Stop(ctx, name, 5*time.Second)
	if err != nil || !destroyed || !strings.Contains(note, "monitor") {
		t.Fatalf("stop with the monitor lost: destroyed=%v note=%q err=%v", destroyed, note, err)
	}
	final, err := m.Wait(ctx, name)
	if err != nil || final.State != "shut off" || final.Reason != "destroyed" {
		t.Errorf("final = %+v, %v; want shut off (destroyed)", final, err)
	}
}

// A domain name that exists is never touched by a transient run.
func TestTransientNameLeavesTheDomain(t *testing.T) {
	dir := t.TempDir()
	m := &Manager{StateDir: dir, RunDir: filepath.Join(dir, "run"), LockTimeout: time.Second}
	d, err := domain.Parse(strings.NewReader(`<domain type='qemu'><name>keep</name><memory>1024</memory><os><kernel>/k</kernel></os></domain>`))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Define(d); err != nil {
		t.Fatal(err)
	}
	before, _ := m.Get("keep")
	t2, _ := domain.Parse(strings.NewReader(`<domain type='qemu'><name>keep</name><uuid>` + before.UUID + `</uuid><memory>1024</memory><os><kernel>/k</kernel></os></domain>`))
	if err := m.transientName(t2); err != nil {
		t.Fatal(err)
	}
	if t2.Name == "keep" || !strings.HasPrefix(t2.Name, "keep-") || t2.UUID == before.UUID {
		t.Errorf("transient run named %s uuid %s; want a fresh name and uuid beside keep (%s)", t2.Name, t2.UUID, before.UUID)
	}
}
