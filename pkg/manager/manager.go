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
	"strings"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/rundir"
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
	// Runtime here is the corrected state ("shut off (crashed)", or the
	// final state its supervisor could not record), and Record is what the
	// next command that writes records.
	Reconciled bool
	Record     store.Runtime
	// Stale says why the store's record is behind: the supervisor has a
	// final state that the database did not take yet.
	Stale string
	// Strays are QEMU processes of the domain that the record does not
	// name (a supervisor killed while it started them); destroy ends them.
	Strays []proc.ID
}

// observe checks the runtime record of domain name against the host; it
// writes nothing. found are the QEMUs found in its runtime directory.
func (m *Manager) observe(name string, rt store.Runtime, found []proc.ID) (o Observed) {
	if len(found) == 0 && !rt.Active() {
		return Observed{Runtime: rt} // most of a long list: nothing to check
	}
	o = Observed{Runtime: rt}
	for _, id := range found {
		if id != rt.QEMU {
			o.Strays = append(o.Strays, id)
		}
	}
	defer func() {
		if len(o.Strays) == 0 {
			return
		}
		pids := fmt.Sprint(o.Strays[0].PID)
		for _, id := range o.Strays[1:] {
			pids += fmt.Sprintf(", %d", id.PID)
		}
		note := fmt.Sprintf("QEMU pid %s runs unrecorded (its supervisor was killed while starting it); destroy ends it", pids)
		if !o.Active() {
			// A QEMU is there, held before its first instruction.
			o.Runtime = store.Runtime{State: store.StatePaused, Reason: "starting up", Accel: rt.Accel, Generation: rt.Generation, Since: rt.Since}
			o.QEMUAlive = true
		}
		o.Detail = strings.TrimPrefix(o.Detail+"; "+note, "; ")
	}()
	if !rt.Active() {
		return o
	}
	o.QEMUAlive, o.Supervised = proc.Alive(rt.QEMU), proc.Alive(rt.Supervisor)
	if o.QEMUAlive {
		return o
	}
	// QEMU is gone. Its supervisor keeps the final state in the runtime
	// directory while the store cannot take it.
	if p, ok := rundir.Pending(m.DomainRunDir(name)); ok && p.Generation == rt.Generation {
		o.Runtime, o.Record = p, p
		o.Stale = "the state database has not taken this yet; minivirt records it as soon as it can"
		o.Reconciled = !o.Supervised // a live supervisor records it itself
		return o
	}
	if o.Supervised { // a live supervisor records QEMU's end itself
		return o
	}
	final := store.Runtime{State: store.StateShutoff, Reason: "crashed", Accel: rt.Accel, Generation: rt.Generation,
		Detail: "QEMU and its supervisor were gone (killed, or the host restarted)", Since: time.Now().UTC()}
	if rt.State == store.StateInShutdown {
		// QEMU exits by itself on the guest's power-off: the shutdown
		// under way ended while nobody watched.
		final.Reason, final.Detail = "shutdown", "the guest powered off while its supervisor was gone"
	}
	o.Runtime, o.Record, o.Reconciled = final, final, true
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
	found, err := supervisor.FindDomainQEMU(m.DomainRunDir(name))
	if err != nil {
		return nil, Observed{}, err
	}
	return d, m.observe(name, rt, found), nil
}

// reconcile records the corrected state of a domain whose processes are
// gone, unless its record changed meanwhile (a new start), and removes the
// runtime directory its supervisor left.
func (m *Manager) reconcile(name string, o Observed) error {
	if !o.Reconciled {
		return nil
	}
	err := m.write(func(s *store.Store) error {
		err := s.UpdateRuntimeIf(name, o.Record.Generation, func(r *store.Runtime) error {
			if r.Active() && !proc.Alive(r.QEMU) && !proc.Alive(r.Supervisor) {
				*r = o.Record
			}
			return nil
		})
		if errors.Is(err, store.ErrSuperseded) {
			return nil // a newer start owns the record
		}
		return err
	})
	if err == nil {
		m.removeStale(name)
	}
	return err
}

// Entry is one domain in List. Its Runtime holds what the domain's list
// record keeps of its runtime record (see store.ListRecord): state,
// reason, accelerator, id, generation and processes; not its detail,
// network, run directory or time, which Observe reads.
type Entry struct {
	Name, UUID string
	Autostart  bool
	Observed
}

// List returns every defined domain with its checked state, sorted by name.
// Many domains are better gone through with Listing, which keeps none.
func (m *Manager) List() ([]Entry, error) {
	l, err := m.Listing()
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, l.Len())
	for l.Next() {
		out = append(out, *l.Entry())
	}
	return out, l.Err()
}

// Listing is every defined domain, sorted by name, read in one go from the
// domains' list records (not their definitions nor whole runtime records),
// and checked against the host one at a time by Next: going through it
// allocates nothing per domain but what observing a domain that runs
// takes. Use it as a bufio.Scanner.
type Listing struct {
	m       *Manager
	records *store.Listing
	found   map[string][]supervisor.QEMUProcess // every QEMU of m.RunDir, by domain
	r       store.ListRecord
	e       Entry
}

// Listing reads every domain's list record; the store is closed again
// before it returns.
func (m *Manager) Listing() (*Listing, error) {
	var records *store.Listing
	err := m.read(func(s *store.Store) error {
		var err error
		records, err = s.Listing()
		return err
	})
	if err != nil {
		return nil, err
	}
	found, err := supervisor.FindQEMU(m.RunDir)
	if err != nil {
		return nil, err
	}
	return &Listing{m: m, records: records, found: found}, nil
}

// Len is the number of domains.
func (l *Listing) Len() int { return l.records.Len() }

// Next checks the next domain and reports whether there was one; at the
// end, or at a record that cannot be read, it returns false, and Err says
// which.
func (l *Listing) Next() bool {
	if !l.records.Next(&l.r) {
		return false
	}
	var ids []proc.ID
	for _, p := range l.found[l.r.Name] {
		ids = append(ids, p.ID)
	}
	l.e = Entry{Name: l.r.Name, UUID: l.r.UUID, Autostart: l.r.Autostart, Observed: l.m.observe(l.r.Name, l.r.Runtime(), ids)}
	return true
}

// Entry is the domain Next went to. It is overwritten by the next call:
// copy what is kept.
func (l *Listing) Entry() *Entry { return &l.e }

// Err is the error that ended Next early, if any.
func (l *Listing) Err() error { return l.records.Err() }

// Define stores a validated definition (redefining keeps the uuid) and
// reports whether the name is new and the state of a domain that runs.
func (m *Manager) Define(d *domain.Domain) (created bool, running string, err error) {
	err = m.write(func(s *store.Store) error {
		if created, err = s.Define(d); err != nil {
			return err
		}
		if rt, err := s.GetRuntime(d.Name); err == nil && m.observe(d.Name, rt, nil).Active() {
			running = rt.State
		}
		return nil
	})
	return created, running, err
}

// Undefine removes a domain's definition, the NVRAM copy minivirt made for
// it and its access record (SetAccess); refused while it runs, or while a
// QEMU of it runs that no record names.
func (m *Manager) Undefine(name string) error {
	found, err := supervisor.FindDomainQEMU(m.DomainRunDir(name))
	if err != nil {
		return err
	}
	return m.write(func(s *store.Store) error {
		rt, err := s.GetRuntime(name)
		if err != nil {
			return err
		}
		if o := m.observe(name, rt, found); o.Active() {
			return fmt.Errorf("domain %s is %s; destroy it first: minivirt destroy %s", name, o.State, name)
		}
		if m.HasManagedSave(name) {
			return fmt.Errorf("domain %s has a managed save image; remove it first (minivirt managedsave-remove %s), or undefine with --managed-save", name, name)
		}
		if err := s.Undefine(name); err != nil {
			return err
		}
		if err := s.ReleaseQEMUSlot(name); err != nil {
			return err
		}
		// The variable store minivirt made for it, and what create made,
		// and nothing else.
		if err := os.Remove(m.NVRAMPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing the NVRAM of %s: %w", name, err)
		}
		if err := m.removeCreated(name); err != nil {
			return fmt.Errorf("removing what create made for %s: %w", name, err)
		}
		// minivirt's record of its snapshots; the snapshots themselves
		// stay in the disks, which are the user's.
		if err := os.Remove(m.snapshotsPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		// Its access record (the key and known hosts files are create's,
		// removed above when create made them).
		return m.removeAccess(name)
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
		if rt, err := s.GetRuntime(name); err == nil && m.observe(name, rt, nil).Active() {
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
	return supervisor.Call(ctx, rundir.PathsIn(m.DomainRunDir(name)).Control, req)
}

// StartOptions are the choices of one start.
type StartOptions struct {
	// Paused leaves the guest's CPUs stopped once QEMU is up, as virsh
	// start --paused: the domain is paused (user) until Resume.
	Paused bool
	// Restore is a file Save made and Restore checked: the guest goes on
	// from it instead of booting. Set by Restore and by Start for a
	// managed save, never by callers.
	Restore string
	// RestoreDefinition runs the restored guest as the domain is defined,
	// not as the file holds it (RestoreOptions.UseDefinition).
	RestoreDefinition bool
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
	if err := d.CheckStart(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	managed := ""
	if opt.Restore == "" {
		// As libvirt: a domain with a managed save goes on from it.
		if managed, err = m.managedRestore(name); err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		opt.Restore = managed
	}
	warnings, err := m.Spawn.Spawn(ctx, m, d, opt)
	if err != nil {
		return warnings, fmt.Errorf("start %s: %w", name, err)
	}
	if managed != "" {
		if err := os.Remove(managed); err != nil {
			return warnings, fmt.Errorf("start %s: removing its managed save: %w", name, err)
		}
	}
	return warnings, nil
}

// ErrShutdownTimeout is wrapped by Shutdown when the guest did not power
// off in time.
var ErrShutdownTimeout = errors.New("shutdown timed out")

// ErrPaused is wrapped by Shutdown for a paused domain: its guest cannot
// act on the power button, and the press would wait for its next resume.
var ErrPaused = errors.New("domain is paused")

// Shutdown presses the guest's ACPI power button and waits until the domain
// is shut off, at most timeout. A paused domain is refused, as virsh does;
// a guest that ignores the button is running again after timeout, and its
// supervisor says so in the state's detail.
func (m *Manager) Shutdown(ctx context.Context, name string, timeout time.Duration) error {
	_, o, err := m.running(name)
	if err != nil {
		return err
	}
	if o.State == store.StatePaused {
		return fmt.Errorf("%w: %s is paused (%s), so its guest cannot act on the ACPI power button; resume it first (minivirt resume %s) or end it (minivirt destroy %s)", ErrPaused, name, o.Reason, name, name)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := m.call(ctx, name, supervisor.Request{Op: supervisor.OpShutdown, Timeout: timeout}); err != nil {
		return fmt.Errorf("shutdown %s: %w", name, err)
	}
	if _, err := m.waitEnd(ctx, name, o.Generation, o.Supervisor); err != nil {
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
	if o.Reconciled && len(o.Strays) == 0 {
		return " (its QEMU was already gone; cleaned up)", m.reconcile(name, o)
	}
	if !o.Active() {
		return "", &NotRunningError{name}
	}
	ctx, cancel := context.WithTimeout(ctx, destroyTimeout)
	defer cancel()
	if o.Supervised {
		// A supervisor still starting answers "starting": the destroy
		// waits for the start to finish (as libvirt's job lock makes it),
		// then ends what it started.
		err := m.callWhenStarted(ctx, name, supervisor.Request{Op: supervisor.OpDestroy})
		if err == nil {
			if _, err := m.waitEnd(ctx, name, o.Generation, o.Supervisor); err != nil {
				return "", fmt.Errorf("destroy %s: the supervisor did not finish: %w", name, err)
			}
			if len(o.Strays) == 0 {
				return "", nil
			}
			return " (and the QEMU no record named)", m.killAll(ctx, name, o.Strays)
		}
		note = fmt.Sprintf(" (its supervisor did not answer: %v; QEMU was killed by pid)", err)
	} else if len(o.Strays) > 0 && !o.QEMUAlive {
		note = " (its QEMU ran unrecorded; killed by pid)"
	} else {
		note = " (it was unsupervised; QEMU was killed by pid)"
	}
	return note, m.destroyUnsupervised(ctx, name, o)
}

// callWhenStarted is call, sent again while the supervisor answers that
// it is still starting, until ctx ends.
func (m *Manager) callWhenStarted(ctx context.Context, name string, req supervisor.Request) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := m.call(ctx, name, req)
		if !errors.Is(err, supervisor.ErrStarting) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-tick.C:
		}
	}
}

// supervisorGrace is how long destroy lets a supervisor whose QEMU it
// killed record the end itself before it kills the supervisor too.
const supervisorGrace = 5 * time.Second

// destroyUnsupervised kills the QEMU of a domain whose supervisor is gone
// or does not answer (and any QEMU of it that no record names), waits for
// them without holding the store, ends a supervisor that does not go by
// itself, and records the domain as destroyed, unless a newer start owns
// the record by then.
func (m *Manager) destroyUnsupervised(ctx context.Context, name string, o Observed) error {
	victims := o.Strays
	if o.QEMUAlive && !o.QEMU.IsZero() {
		victims = append([]proc.ID{o.QEMU}, victims...)
	}
	if err := m.killAll(ctx, name, victims); err != nil {
		return err
	}
	if self, _ := proc.Self(); proc.Alive(o.Supervisor) && o.Supervisor != self {
		// A supervisor that lives records its QEMU's end and exits; one
		// that does not answer (stopped, stuck) is ended.
		grace, cancel := context.WithTimeout(ctx, supervisorGrace)
		err := waitGone(grace, o.Supervisor)
		cancel()
		if err != nil {
			if err := m.killAll(ctx, name, []proc.ID{o.Supervisor}); err != nil {
				return err
			}
		}
	}
	// No supervisor of this start lives now: a QEMU it spawned after the
	// domain was observed, and never recorded, ends too.
	var current store.Runtime
	err := m.read(func(s *store.Store) error {
		var err error
		current, err = s.GetRuntime(name)
		return err
	})
	if err != nil {
		return err
	}
	if current.Generation == o.Generation { // not a newer start's QEMU
		late, err := supervisor.FindDomainQEMU(m.DomainRunDir(name))
		if err != nil {
			return err
		}
		if err := m.killAll(ctx, name, late); err != nil {
			return err
		}
	}
	m.removeStale(name)
	err = m.write(func(s *store.Store) error {
		return s.UpdateRuntimeIf(name, o.Generation, func(r *store.Runtime) error {
			*r = store.Runtime{State: store.StateShutoff, Reason: "destroyed", Accel: o.Accel, Generation: o.Generation, Since: time.Now().UTC()}
			return nil
		})
	})
	if errors.Is(err, store.ErrSuperseded) {
		return nil // a newer start owns the record: what it says stands
	}
	return err
}

// killAll sends SIGKILL to each process that is still the one its ID
// names, and waits until all are gone.
func (m *Manager) killAll(ctx context.Context, name string, ids []proc.ID) error {
	for _, id := range ids {
		if err := proc.Signal(id, syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("destroy %s: killing pid %d: %w", name, id.PID, err)
		}
	}
	for _, id := range ids {
		if err := waitGone(ctx, id); err != nil {
			return fmt.Errorf("destroy %s: pid %d did not exit after SIGKILL: %w", name, id.PID, err)
		}
	}
	return nil
}

// removeStale removes a runtime directory that minivirt made and whose
// supervisor is gone; anything else is left alone.
func (m *Manager) removeStale(name string) {
	dir := m.DomainRunDir(name)
	if state, _, _ := rundir.Inspect(dir); state == rundir.Stale {
		rundir.Remove(dir)
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
	case errors.Is(shutdownErr, ErrShutdownTimeout), errors.As(shutdownErr, &unsupervised), errors.Is(shutdownErr, supervisor.ErrMonitorLost), errors.Is(shutdownErr, ErrPaused):
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
		if errors.Is(shutdownErr, ErrPaused) {
			note = " (it was paused: its guest could not act on the power button)"
		}
	}
	return true, note, nil
}

// control sends a request that needs no wait (reboot, suspend, resume) to a
// running domain's supervisor.
func (m *Manager) control(ctx context.Context, name, op string) error {
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
	Live *LiveView
	// LiveError says why a supervisor that should answer did not.
	LiveError error
	// QEMUUID is the user QEMU runs as (its effective uid), -1 when it
	// does not run; Confined is the directory it is confined to (its
	// chroot), "" when it is not.
	QEMUUID  int
	Confined string
}

// Status reports a domain's state. It only reads.
func (m *Manager) Status(ctx context.Context, name string) (Status, error) {
	d, o, err := m.Observe(name)
	if err != nil {
		return Status{}, err
	}
	st := Status{Domain: d, Observed: o, QEMUUID: -1}
	if o.Active() && o.QEMUAlive {
		st.QEMUUID, st.Confined = qemuUser(o.QEMU.PID)
	}
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
			if p := resp.Status.RecordPending; p != "" {
				st.Stale = "the state database has not taken this yet (" + p + "); the supervisor keeps trying"
			}
		}
	}
	return st, nil
}

// LiveStatus is Status for a command that shows what only a live
// supervisor knows (counters, leases, live changes): for a running domain
// whose supervisor is gone or does not answer it fails, saying so, rather
// than show zeros or empty tables.
func (m *Manager) LiveStatus(ctx context.Context, name string) (Status, error) {
	st, err := m.Status(ctx, name)
	if err != nil || !st.Active() || st.Live != nil {
		return st, err
	}
	if st.LiveError != nil {
		return st, fmt.Errorf("domain %s is %s but its supervisor (pid %d) does not answer (%v); its counters and addresses are unknown: try again, or `minivirt destroy %s`", name, st.State, st.Supervisor.PID, st.LiveError, name)
	}
	return st, fmt.Errorf("domain %s is %s but unsupervised (its supervisor pid %d is gone); its counters and addresses are unknown: only `minivirt destroy %s` works now", name, st.State, st.Supervisor.PID, name)
}

// Wait waits until the domain is no longer active and returns its final
// record: "shut off" with reason "shutdown" after a clean power-off. It
// reads the store only, a short read at a time.
func (m *Manager) Wait(ctx context.Context, name string) (store.Runtime, error) {
	return m.waitEnd(ctx, name, 0, proc.ID{})
}

// waitEnd is Wait for a start the caller already knows (its generation
// gen, 0 for whichever runs, and its supervisor): the record may turn
// inactive before Wait ever sees it active, or belong to a newer start by
// then, and the supervisor must still be waited for.
func (m *Manager) waitEnd(ctx context.Context, name string, gen uint64, sup proc.ID) (store.Runtime, error) {
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
		o := m.observe(name, rt, nil)
		over := !o.Active() || (gen != 0 && rt.Generation != gen)
		if o.Active() && !over {
			sup, gen = rt.Supervisor, rt.Generation
		} else if over {
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
