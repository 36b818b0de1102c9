package manager

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/fakeqemu"
	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// The test binary doubles as a fake QEMU (internal/fakeqemu): a domain
// names it as its <emulator>, the supervisor runs it with QEMU's argv, and
// the fake's mode (fakeEnv) picks its behaviour.
const fakeEnv = fakeqemu.Env

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeEnv); mode != "" {
		os.Exit(fakeqemu.Main(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
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
