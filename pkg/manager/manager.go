// Package manager is minivirt's lifecycle engine: define, start, shut down,
// destroy, stop, reboot, suspend, resume, status, list and run, with the
// fallbacks for a domain whose supervisor is gone. The command line and
// pkg/rig both drive domains through it, and nothing else does.
//
// Commands that only read open the store read-only (bbolt's shared lock),
// and nothing holds the store while it waits for a process. A record that
// claims a running domain is checked against the processes it names, and a
// reading command reports the corrected state without writing it; the next
// command that writes records it.
package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/store"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// Manager manages the domains of one state directory.
type Manager struct {
	StateDir    string        // bbolt file and logs
	RunDir      string        // the runtime root: one directory per running domain
	LockTimeout time.Duration // how long to wait for another process that holds the store
	// Spawn starts a domain's supervisor and returns once the guest runs
	// or the start failed.
	Spawn Spawner
}

// Timeouts of the engine's own waits.
const (
	controlTimeout = 30 * time.Second
	destroyTimeout = 30 * time.Second
)

// DomainRunDir is the runtime directory of one domain.
func (m *Manager) DomainRunDir(name string) string { return filepath.Join(m.RunDir, name) }

// LogDir holds each domain's console log (NAME.log), QEMU's (NAME.qemu.log)
// and the supervisor's (NAME.supervisor.log).
func (m *Manager) LogDir() string { return filepath.Join(m.StateDir, "logs") }

// NVRAMPath is where a UEFI domain's own variable store lives when its
// definition names none: made at its first start, kept across starts,
// removed by undefine.
func (m *Manager) NVRAMPath(name string) string {
	return filepath.Join(m.StateDir, "nvram", name+"_VARS.fd")
}

// ConsoleLog is the path of a domain's serial console log.
func (m *Manager) ConsoleLog(name string) string { return filepath.Join(m.LogDir(), name+".log") }

func (m *Manager) read(fn func(*store.Store) error) error {
	s, err := store.OpenReadOnly(m.StateDir, m.LockTimeout)
	if err != nil {
		return err
	}
	defer s.Close()
	return fn(s)
}

func (m *Manager) write(fn func(*store.Store) error) error {
	s, err := store.Open(m.StateDir, m.LockTimeout)
	if err != nil {
		return err
	}
	defer s.Close()
	return fn(s)
}

// OpenStore opens the store for writing, for a supervisor's records.
func (m *Manager) OpenStore() (*store.Store, error) { return store.Open(m.StateDir, m.LockTimeout) }

// Observed is a domain's runtime record checked against the processes it
// names. A recorded pid counts only while its boot id and start time match.
type Observed struct {
	store.Runtime
	QEMUAlive, Supervised bool
	// Reconciled is set when the record claimed a QEMU that is gone: the
	// Runtime here is the corrected state, "shut off (crashed)".
	Reconciled bool
}

// observe checks a runtime record against the host; it writes nothing.
func observe(rt store.Runtime) Observed {
	o := Observed{Runtime: rt}
	if !rt.Active() {
		return o
	}
	o.QEMUAlive, o.Supervised = proc.Alive(rt.QEMU), proc.Alive(rt.Supervisor)
	if o.QEMUAlive || o.Supervised { // a live supervisor records QEMU's end itself
		return o
	}
	o.Runtime = store.Runtime{State: store.StateShutoff, Reason: "crashed", Accel: rt.Accel,
		Detail: "QEMU and its supervisor were gone (killed, or the host restarted)", Since: time.Now().UTC()}
	o.Reconciled = true
	return o
}

// Get returns a domain's definition.
func (m *Manager) Get(name string) (*domain.Domain, error) {
	var d *domain.Domain
	err := m.read(func(s *store.Store) error {
		var err error
		d, err = s.Get(name)
		return err
	})
	return d, err
}

// Observe returns a domain's definition and its runtime record, checked
// against the host. It only reads.
func (m *Manager) Observe(name string) (*domain.Domain, Observed, error) {
	var d *domain.Domain
	var rt store.Runtime
	err := m.read(func(s *store.Store) error {
		var err error
		if d, err = s.Get(name); err != nil {
			return err
		}
		rt, err = s.GetRuntime(name)
		return err
	})
	if err != nil {
		return nil, Observed{}, err
	}
	return d, observe(rt), nil
}

// reconcile records the corrected state of a domain whose processes are
// gone, unless its record changed meanwhile (a new start).
func (m *Manager) reconcile(name string, o Observed) error {
	if !o.Reconciled {
		return nil
	}
	return m.write(func(s *store.Store) error {
		return s.UpdateRuntime(name, func(r *store.Runtime) error {
			if r.Active() && observe(*r).Reconciled {
				*r = o.Runtime
			}
			return nil
		})
	})
}

// Entry is one domain in List.
type Entry struct {
	Name, UUID string
	Autostart  bool
	Observed
}

// List returns every defined domain with its checked state, sorted by name.
func (m *Manager) List() ([]Entry, error) {
	var entries []store.Entry
	err := m.read(func(s *store.Store) error {
		var err error
		entries, err = s.List()
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]Entry, len(entries))
	for i, e := range entries {
		out[i] = Entry{Name: e.Name, UUID: e.UUID, Autostart: e.Autostart, Observed: observe(e.Runtime)}
	}
	return out, nil
}

// Define stores a validated definition (redefining keeps the uuid) and
// reports whether the name is new and the state of a domain that runs.
func (m *Manager) Define(d *domain.Domain) (created bool, running string, err error) {
	err = m.write(func(s *store.Store) error {
		if created, err = s.Define(d); err != nil {
			return err
		}
		if rt, err := s.GetRuntime(d.Name); err == nil && observe(rt).Active() {
			running = rt.State
		}
		return nil
	})
	return created, running, err
}

// Undefine removes a domain's definition; refused while it runs.
func (m *Manager) Undefine(name string) error {
	return m.write(func(s *store.Store) error {
		rt, err := s.GetRuntime(name)
		if err != nil {
			return err
		}
		if o := observe(rt); o.Active() {
			return fmt.Errorf("domain %s is %s; destroy it first: minivirt destroy %s", name, rt.State, name)
		}
		if err := s.Undefine(name); err != nil {
			return err
		}
		// The variable store minivirt made for it, and nothing else.
		if err := os.Remove(m.NVRAMPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing the NVRAM of %s: %w", name, err)
		}
		return nil
	})
}

// Change applies change to a stored definition and stores the result, in
// one write transaction's worth of time; it reports the state of a domain
// that runs (the change then takes effect at its next start).
func (m *Manager) Change(name string, change func(*domain.Domain) error) (running string, err error) {
	err = m.write(func(s *store.Store) error {
		d, err := s.Get(name)
		if err != nil {
			return err
		}
		if err := change(d); err != nil {
			return err
		}
		if _, err := s.Define(d); err != nil {
			return err
		}
		if rt, err := s.GetRuntime(name); err == nil && observe(rt).Active() {
			running = rt.State
		}
		return nil
	})
	return running, err
}

// UnsupervisedError says that QEMU runs but its supervisor is gone.
type UnsupervisedError struct {
	Name string
	PID  int
}

func (e *UnsupervisedError) Error() string {
	return fmt.Sprintf("domain %s is unsupervised (its supervisor pid %d is gone); only `minivirt destroy %s` works now", e.Name, e.PID, e.Name)
}

// NotRunningError says that a domain is not running.
type NotRunningError struct{ Name string }

func (e *NotRunningError) Error() string { return fmt.Sprintf("domain %s is not running", e.Name) }

// running loads a domain that must run under a live supervisor.
func (m *Manager) running(name string) (*domain.Domain, Observed, error) {
	d, o, err := m.Observe(name)
	if err != nil {
		return nil, o, err
	}
	if !o.Active() {
		return nil, o, &NotRunningError{name}
	}
	if !o.Supervised {
		return nil, o, &UnsupervisedError{name, o.Supervisor.PID}
	}
	return d, o, nil
}

// call sends one control request to a domain's supervisor.
func (m *Manager) call(ctx context.Context, name string, req supervisor.Request) (supervisor.Response, error) {
	return supervisor.Call(ctx, launcher.PathsIn(m.DomainRunDir(name)).Control, req)
}

// StartOptions are the choices of one start.
type StartOptions struct {
	// Paused leaves the guest's CPUs stopped once QEMU is up, as virsh
	// start --paused: the domain is paused (user) until Resume.
	Paused bool
}

// Start starts a domain and returns once its CPUs run under supervision
// (or, paused, wait for Resume), with the start's warnings.
func (m *Manager) Start(ctx context.Context, name string, opt StartOptions) ([]string, error) {
	d, o, err := m.Observe(name)
	if err != nil {
		return nil, err
	}
	if err := m.reconcile(name, o); err != nil {
		return nil, err
	}
	if o.Active() {
		return nil, fmt.Errorf("domain %s is already %s", name, o.State)
	}
	if m.Spawn == nil {
		return nil, errors.New("manager: no Spawner set")
	}
	warnings, err := m.Spawn.Spawn(ctx, m, d, opt)
	if err != nil {
		return warnings, fmt.Errorf("start %s: %w", name, err)
	}
	return warnings, nil
}

// ErrShutdownTimeout is wrapped by Shutdown when the guest did not power
// off in time.
var ErrShutdownTimeout = errors.New("shutdown timed out")

// Shutdown presses the guest's ACPI power button and waits until the domain
// is shut off, at most timeout.
func (m *Manager) Shutdown(ctx context.Context, name string, timeout time.Duration) error {
	_, o, err := m.running(name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := m.call(ctx, name, supervisor.Request{Op: supervisor.OpShutdown}); err != nil {
		return fmt.Errorf("shutdown %s: %w", name, err)
	}
	if _, err := m.waitEnd(ctx, name, o.Supervisor); err != nil {
		return fmt.Errorf("domain %s did not shut off within %s: the guest ignores the ACPI power button; use `minivirt stop` or `minivirt destroy`: %w", name, timeout, ErrShutdownTimeout)
	}
	return nil
}

// Destroy stops a domain at once. The note says what was found, when the
// domain had no live supervisor.
func (m *Manager) Destroy(ctx context.Context, name string) (note string, err error) {
	_, o, err := m.Observe(name)
	if err != nil {
		return "", err
	}
	if o.Reconciled {
		return " (its QEMU was already gone; cleaned up)", m.reconcile(name, o)
	}
	if !o.Active() {
		return "", &NotRunningError{name}
	}
	ctx, cancel := context.WithTimeout(ctx, destroyTimeout)
	defer cancel()
	if o.Supervised {
		_, err := m.call(ctx, name, supervisor.Request{Op: supervisor.OpDestroy})
		if err == nil {
			if _, err := m.waitEnd(ctx, name, o.Supervisor); err != nil {
				return "", fmt.Errorf("destroy %s: the supervisor did not finish: %w", name, err)
			}
			return "", nil
		}
		note = fmt.Sprintf(" (its supervisor did not answer: %v; QEMU was killed by pid)", err)
	} else {
		note = " (it was unsupervised; QEMU was killed by pid)"
	}
	return note, m.destroyUnsupervised(ctx, name, o)
}

// destroyUnsupervised kills the QEMU of a domain whose supervisor is gone
// or does not answer, waits for it without holding the store, and records
// the domain as destroyed.
func (m *Manager) destroyUnsupervised(ctx context.Context, name string, o Observed) error {
	if err := proc.Signal(o.QEMU, 9); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("destroy %s: killing QEMU pid %d: %w", name, o.QEMU.PID, err)
	}
	if err := waitGone(ctx, o.QEMU); err != nil {
		return fmt.Errorf("destroy %s: QEMU pid %d did not exit after SIGKILL: %w", name, o.QEMU.PID, err)
	}
	if !proc.Alive(o.Supervisor) {
		m.removeStale(name)
	}
	return m.write(func(s *store.Store) error {
		return s.SetRuntime(name, store.Runtime{State: store.StateShutoff, Reason: "destroyed", Accel: o.Accel, Since: time.Now().UTC()})
	})
}

// removeStale removes a runtime directory that minivirt made and whose
// supervisor is gone; anything else is left alone.
func (m *Manager) removeStale(name string) {
	dir := m.DomainRunDir(name)
	if state, _, _ := supervisor.InspectDir(dir); state == supervisor.DirStale {
		supervisor.RemoveDir(dir)
	}
}

// Stop shuts a domain down and destroys it when the guest does not power
// off within timeout, or cannot be asked to (no supervisor, no monitor).
// destroyed reports which way it ended; note is Destroy's.
func (m *Manager) Stop(ctx context.Context, name string, timeout time.Duration) (destroyed bool, note string, err error) {
	shutdownErr := m.Shutdown(ctx, name, timeout)
	var unsupervised *UnsupervisedError
	switch {
	case shutdownErr == nil:
		return false, "", nil
	case errors.Is(shutdownErr, ErrShutdownTimeout), errors.As(shutdownErr, &unsupervised), errors.Is(shutdownErr, supervisor.ErrMonitorLost):
	default:
		return false, "", shutdownErr
	}
	note, err = m.Destroy(ctx, name)
	if err != nil {
		return false, "", err
	}
	if note == "" {
		note = fmt.Sprintf(" (it did not shut down within %s)", timeout)
		if errors.Is(shutdownErr, supervisor.ErrMonitorLost) {
			note = " (its QMP monitor is lost: the power button could not be pressed)"
		}
	}
	return true, note, nil
}

// Control sends a request that needs no wait (reboot, suspend, resume) to a
// running domain's supervisor.
func (m *Manager) Control(ctx context.Context, name, op string) error {
	if _, _, err := m.running(name); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	if _, err := m.call(ctx, name, supervisor.Request{Op: op}); err != nil {
		return fmt.Errorf("%s %s: %w", op, name, err)
	}
	return nil
}

// QMP sends a raw QMP command through the supervisor and returns QEMU's reply.
func (m *Manager) QMP(ctx context.Context, name string, command []byte) ([]byte, error) {
	if _, _, err := m.running(name); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	resp, err := m.call(ctx, name, supervisor.Request{Op: supervisor.OpQMP, QMP: command})
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", name, err)
	}
	return resp.QMP, nil
}

// Status is a domain's definition, its checked state, and what its live
// supervisor says.
type Status struct {
	Domain *domain.Domain
	Observed
	// Live is the supervisor's own view, nil when none answered.
	Live *supervisor.Status
	// LiveError says why a supervisor that should answer did not.
	LiveError error
}

// Status reports a domain's state. It only reads.
func (m *Manager) Status(ctx context.Context, name string) (Status, error) {
	d, o, err := m.Observe(name)
	if err != nil {
		return Status{}, err
	}
	st := Status{Domain: d, Observed: o}
	if o.Active() && o.Supervised {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		resp, err := m.call(ctx, name, supervisor.Request{Op: supervisor.OpStatus})
		switch {
		case err != nil:
			st.LiveError = err
		case resp.Status != nil:
			st.Live = resp.Status
			// The supervisor's word is newer than the record.
			st.State, st.Reason, st.Detail = resp.Status.State, resp.Status.Reason, resp.Status.Detail
		}
	}
	return st, nil
}

// Wait waits until the domain is no longer active and returns its final
// record: "shut off" with reason "shutdown" after a clean power-off. It
// reads the store only, a short read at a time.
func (m *Manager) Wait(ctx context.Context, name string) (store.Runtime, error) {
	return m.waitEnd(ctx, name, proc.ID{})
}

// waitEnd is Wait for a domain whose supervisor the caller already knows:
// the record may turn inactive before Wait ever sees it active, and the
// supervisor must still be waited for.
func (m *Manager) waitEnd(ctx context.Context, name string, sup proc.ID) (store.Runtime, error) {
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	self, _ := proc.Self()
	for {
		var rt store.Runtime
		err := m.read(func(s *store.Store) error {
			var err error
			rt, err = s.GetRuntime(name)
			return err
		})
		if err != nil {
			return rt, err
		}
		o := observe(rt)
		if o.Active() {
			sup = rt.Supervisor
		} else {
			// A detached supervisor exits right after its last record:
			// nothing of the domain outlives the wait.
			if !sup.IsZero() && sup != self {
				if err := waitGone(ctx, sup); err != nil {
					return rt, err
				}
			}
			return o.Runtime, nil
		}
		select {
		case <-ctx.Done():
			return rt, ctx.Err()
		case <-tick.C:
		}
	}
}

// waitGone waits until the process id names has exited.
func waitGone(ctx context.Context, id proc.ID) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for proc.Alive(id) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// Resolve returns the name of the domain that nameOrUUID names: virsh takes
// a uuid wherever it takes a name.
func (m *Manager) Resolve(nameOrUUID string) (string, error) {
	var name string
	err := m.read(func(s *store.Store) error {
		var err error
		name, err = s.Lookup(nameOrUUID)
		return err
	})
	return name, err
}

// SetAutostart marks a domain to start when the host boots, or clears the
// mark (see StartMarked).
func (m *Manager) SetAutostart(name string, on bool) error {
	return m.write(func(s *store.Store) error { return s.SetAutostart(name, on) })
}

// Autostart reports whether a domain is marked to start at boot.
func (m *Manager) Autostart(name string) (bool, error) {
	var on bool
	err := m.read(func(s *store.Store) error {
		var err error
		on, err = s.Autostart(name)
		return err
	})
	return on, err
}

// Started is the result of starting one marked domain.
type Started struct {
	Name     string
	Warnings []string
	Err      error // nil when it started, or ran already
	Already  bool  // it was running
}

// StartMarked starts every domain marked for autostart that is not running,
// one after another, and reports each: minivirt has no daemon, so a boot
// unit calls this once.
func (m *Manager) StartMarked(ctx context.Context) ([]Started, error) {
	entries, err := m.List()
	if err != nil {
		return nil, err
	}
	var out []Started
	for _, e := range entries {
		if !e.Autostart {
			continue
		}
		if e.Active() {
			out = append(out, Started{Name: e.Name, Already: true})
			continue
		}
		w, err := m.Start(ctx, e.Name, StartOptions{})
		out = append(out, Started{Name: e.Name, Warnings: w, Err: err})
	}
	return out, nil
}
