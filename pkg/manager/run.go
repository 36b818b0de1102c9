package manager

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/store"
)

// Outcome is how a run ended.
type Outcome int

// How a run ends.
const (
	PoweredOff  Outcome = iota // the guest powered itself off
	Failed                     // the guest could not be started
	Crashed                    // the guest panicked or QEMU died
	TimedOut                   // RunOptions.Timeout passed; the guest was destroyed
	Interrupted                // the context ended; the guest was destroyed
)

// RunOptions are the choices of Run.
type RunOptions struct {
	// Transient runs the domain under a name no domain has and removes its
	// definition and logs at the end. A domain of the same name is never
	// touched: the run takes the name plus a random suffix (and a uuid of
	// its own) when the name is taken.
	Transient bool
	// Timeout, when not 0, destroys a guest that has not powered off by then.
	Timeout time.Duration
	// Console, when set, receives the serial console as it is written.
	Console io.Writer
}

// RunResult says how a run ended.
type RunResult struct {
	Name     string // the name the domain ran under
	Outcome  Outcome
	Final    store.Runtime
	Warnings []string
}

// Run defines and starts d, optionally follows its console, and waits until
// the guest powers off, the timeout passes or ctx ends (then the guest is
// destroyed). The error says why when the outcome is not PoweredOff.
func (m *Manager) Run(ctx context.Context, d *domain.Domain, opt RunOptions) (res RunResult, err error) {
	if opt.Transient {
		if err := m.transientName(d); err != nil {
			return RunResult{Outcome: Failed}, err
		}
	}
	res.Name = d.Name
	if err := d.CheckStart(); err != nil { // nothing is stored for a domain that cannot start
		return RunResult{Name: d.Name, Outcome: Failed}, err
	}
	err = m.write(func(s *store.Store) error {
		if rt, err := s.GetRuntime(d.Name); err == nil && m.observe(d.Name, rt, nil).Active() {
			return fmt.Errorf("domain %s is already %s", d.Name, rt.State)
		}
		_, err := s.Define(d)
		return err
	})
	if err != nil {
		return RunResult{Name: d.Name, Outcome: Failed}, err
	}
	if opt.Transient {
		defer m.removeTransient(d.Name)
	}
	logStart := int64(0)
	if fi, err := os.Stat(m.ConsoleLog(d.Name)); err == nil {
		logStart = fi.Size()
	}
	res.Warnings, err = m.Start(ctx, d.Name, StartOptions{})
	if err != nil {
		res.Outcome = Failed
		return res, err
	}
	_, o, err := m.Observe(d.Name)
	if err != nil {
		res.Outcome = Failed
		return res, err
	}

	waitCtx, cancel := ctx, context.CancelFunc(func() {})
	if opt.Timeout > 0 {
		waitCtx, cancel = context.WithTimeout(ctx, opt.Timeout)
	}
	defer cancel()
	consoleDone := make(chan struct{})
	if opt.Console != nil {
		go func() {
			defer close(consoleDone)
			m.FollowConsole(waitCtx, d.Name, logStart, o, opt.Console)
		}()
	} else {
		close(consoleDone)
	}
	final, waitErr := m.waitEnd(waitCtx, d.Name, o.Generation, o.Supervisor)
	<-consoleDone
	if waitErr != nil {
		dctx, dcancel := context.WithTimeout(context.Background(), destroyTimeout)
		defer dcancel()
		if _, err := m.Destroy(dctx, d.Name); err != nil && !errors.As(err, new(*NotRunningError)) {
			return res, fmt.Errorf("run %s: destroying the guest: %w", d.Name, err)
		}
		res.Final, _ = m.Wait(dctx, d.Name)
		if ctx.Err() != nil {
			res.Outcome = Interrupted
			return res, fmt.Errorf("run %s: interrupted; the guest was destroyed", d.Name)
		}
		res.Outcome = TimedOut
		return res, fmt.Errorf("run %s: the guest did not power off within %s; it was destroyed", d.Name, opt.Timeout)
	}
	res.Final = final
	if final.Reason != "shutdown" {
		res.Outcome = Crashed
		detail := final.Reason
		if final.Detail != "" {
			detail += ": " + final.Detail
		}
		return res, fmt.Errorf("run %s: the guest ended %s (%s)", d.Name, final.State, detail)
	}
	return res, nil
}

// transientName gives d a name that no domain, log or runtime directory
// has, keeping its own when that is free; a renamed domain gets a uuid of
// its own too.
func (m *Manager) transientName(d *domain.Domain) error {
	base := d.Name
	for attempt := 0; attempt < 8; attempt++ {
		if !m.nameTaken(d.Name) {
			return nil
		}
		var r [3]byte
		rand.Read(r[:])
		suffix := "-" + hex.EncodeToString(r[:])
		if len(base)+len(suffix) > 64 {
			base = base[:64-len(suffix)]
		}
		d.Name, d.UUID = base+suffix, domain.NewUUID()
	}
	return fmt.Errorf("run --rm: found no free name for %s", base)
}

func (m *Manager) nameTaken(name string) bool {
	if _, err := m.Get(name); !errors.Is(err, store.ErrNotFound) {
		return true
	}
	for _, p := range m.logFiles(name) {
		if _, err := os.Lstat(p); err == nil {
			return true
		}
	}
	_, err := os.Lstat(m.DomainRunDir(name))
	return err == nil
}

func (m *Manager) logFiles(name string) []string {
	var out []string
	for _, suffix := range []string{".log", ".qemu.log", ".supervisor.log"} {
		out = append(out, filepath.Join(m.LogDir(), name+suffix))
	}
	return out
}

// removeTransient undefines a domain of a transient run and removes its
// logs, which the run made.
func (m *Manager) removeTransient(name string) {
	m.write(func(s *store.Store) error { return s.Undefine(name) })
	for _, p := range m.logFiles(name) {
		os.Remove(p)
	}
}

// FollowConsole copies a domain's console log from offset on, as it grows,
// until the domain's processes are gone (QEMU writes the log) or ctx ends.
func (m *Manager) FollowConsole(ctx context.Context, name string, offset int64, o Observed, w io.Writer) {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	self, _ := proc.Self()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if f == nil {
			if opened, err := os.Open(m.ConsoleLog(name)); err == nil {
				f = opened
				f.Seek(offset, io.SeekStart)
			}
		}
		if f != nil {
			io.Copy(w, f)
		}
		supervisorGone := o.Supervisor == self || !proc.Alive(o.Supervisor)
		if supervisorGone && !proc.Alive(o.QEMU) {
			if f != nil {
				io.Copy(w, f) // the last lines before QEMU exited
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
