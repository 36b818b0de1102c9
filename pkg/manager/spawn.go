package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// QEMUBinary is the emulator used when a domain names none.
const QEMUBinary = "qemu-system-x86_64"

// startTimeout bounds a start, from spawn to running CPUs.
const startTimeout = 90 * time.Second

// A Spawner starts the supervisor of one domain and returns once it has
// reported: the guest's CPUs run, or are held as opt asks (with the
// start's warnings), or the start failed, in which case nothing of it is
// left running.
type Spawner interface {
	Spawn(ctx context.Context, m *Manager, d *domain.Domain, opt StartOptions) ([]string, error)
}

// SuperviseOptions are how one supervisor runs.
type SuperviseOptions struct {
	// Self is the minivirt binary: QEMU runs it as the vmchannel helper.
	Self string
	// Ready is called once, as supervisor.Config.Ready.
	Ready func(warnings []string, err error)
	Log   io.Writer
	// DieWithParent ties QEMU to the calling process (test rigs).
	DieWithParent bool
	// Paused leaves the guest's CPUs stopped (StartOptions.Paused).
	Paused bool
	// Restore is the saved file the guest goes on from
	// (StartOptions.Restore); the domain is then the one it holds, unless
	// RestoreDefinition.
	Restore           string
	RestoreDefinition bool
}

// Supervise runs the supervisor of one defined domain in the calling
// goroutine until its QEMU exits. Both ways of spawning end here.
func (m *Manager) Supervise(ctx context.Context, name string, opt SuperviseOptions) error {
	logger := log.New(opt.Log, "supervisor "+name+": ", log.LstdFlags|log.Lmicroseconds)
	d, err := m.Get(name)
	if err == nil && opt.Restore != "" && !opt.RestoreDefinition {
		d, err = savedDomain(opt.Restore, d)
	}
	if err != nil {
		opt.Ready(nil, err)
		return err
	}
	qemu, err := exec.LookPath(QEMUBinary)
	if err != nil && d.Devices.Emulator == "" {
		err = fmt.Errorf("%s not found: install it with `make deps` (Debian package qemu-system-x86)", QEMUBinary)
		opt.Ready(nil, err)
		return err
	}
	if err := d.Validate(); err != nil {
		// Written by an earlier release, or changed by hand: refuse rather
		// than run it wrongly.
		err = fmt.Errorf("the stored definition: %w; redefine the domain", err)
		opt.Ready(nil, err)
		return err
	}
	kvm, why := launcher.DetectKVM(os.Getenv)
	return supervisor.Run(ctx, supervisor.Config{
		Domain: d,
		Env: launcher.Env{QEMU: qemu, Self: opt.Self, RunDir: m.DomainRunDir(name), LogDir: m.LogDir(),
			KVM: kvm, KVMReason: why, NVRAM: m.NVRAMPath(name),
			OVMFCode: launcher.DefaultOVMFCode, OVMFVars: launcher.DefaultOVMFVars},
		OpenStore:     m.OpenStore,
		Ready:         opt.Ready,
		Log:           logger,
		DieWithParent: opt.DieWithParent,
		Paused:        opt.Paused,
		Restore:       opt.Restore,
	})
}

// Detached spawns each supervisor as a detached process of the minivirt
// binary (its own session, so it outlives the command that started it):
// the command line's way.
type Detached struct {
	// Binary is the minivirt binary; Args returns its arguments that make
	// it run Manager.Supervise for name, as opt asks, with ready's
	// descriptor as fd 3.
	Binary string
	Args   func(m *Manager, name string, opt StartOptions) []string
}

// readyMessage is what a detached supervisor writes on its ready pipe.
type readyMessage struct {
	Warnings []string `json:"warnings,omitempty"`
	Error    string   `json:"error,omitempty"`
}

// ReportReady returns the Ready function of a detached supervisor, which
// writes its word on the pipe f.
func ReportReady(f *os.File, logger *log.Logger) func([]string, error) {
	return func(warnings []string, err error) {
		msg := readyMessage{Warnings: warnings}
		if err != nil {
			msg.Error = err.Error()
			logger.Printf("start failed: %v", err)
		}
		json.NewEncoder(f).Encode(msg)
		f.Close()
	}
}

// Spawn implements Spawner.
func (s Detached) Spawn(ctx context.Context, m *Manager, d *domain.Domain, opt StartOptions) ([]string, error) {
	if err := os.MkdirAll(m.LogDir(), 0o700); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(m.LogDir(), d.Name+".supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command(s.Binary, s.Args(m, d.Name, opt)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The supervisor inherits fd 3 and a minimal environment: the
	// caller's PATH (which QEMU to run) and minivirt's own settings.
	if err := proc.CloseOnExec(); err != nil {
		return nil, fmt.Errorf("closing inherited descriptors: %w", err)
	}
	var extra []string
	if v, ok := os.LookupEnv("MINIVIRT_ACCEL"); ok {
		extra = append(extra, "MINIVIRT_ACCEL="+v)
	}
	cmd.Env = proc.Environ(os.Getenv("PATH"), extra...)
	cmd.ExtraFiles = []*os.File{w} // fd 3
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("starting the supervisor: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	// A failed start returns only once the supervisor is gone: nothing of
	// it may outlive the command that reports the failure.
	waitExit := func() {
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
		}
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { r.SetReadDeadline(time.Now()) })
	defer stop()
	var msg readyMessage
	if err := json.NewDecoder(r).Decode(&msg); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no word from the supervisor within %s; see %s", startTimeout, logf.Name())
		}
		waitExit()
		return nil, fmt.Errorf("the supervisor exited without starting the guest; see %s", logf.Name())
	}
	if msg.Error != "" {
		waitExit()
		return msg.Warnings, errors.New(msg.Error)
	}
	return msg.Warnings, nil
}

// InProcess runs each supervisor in a goroutine of the calling process,
// with QEMU tied to that process: a test rig's way. OnExit, when set, is
// called with Supervise's result once QEMU has exited.
type InProcess struct {
	Self   string
	Log    func(name string) (io.WriteCloser, error)
	OnExit func(name string, err error)
}

// Spawn implements Spawner.
func (s InProcess) Spawn(ctx context.Context, m *Manager, d *domain.Domain, opt StartOptions) ([]string, error) {
	logw, err := s.Log(d.Name)
	if err != nil {
		return nil, err
	}
	type result struct {
		warnings []string
		err      error
	}
	ready := make(chan result, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		err := m.Supervise(context.Background(), d.Name, SuperviseOptions{
			Self:              s.Self,
			Ready:             func(w []string, err error) { ready <- result{w, err} },
			Log:               logw,
			DieWithParent:     true,
			Paused:            opt.Paused,
			Restore:           opt.Restore,
			RestoreDefinition: opt.RestoreDefinition,
		})
		logw.Close()
		if s.OnExit != nil {
			s.OnExit(d.Name, err)
		}
	}()
	select {
	case r := <-ready:
		if r.err != nil {
			<-finished // nothing of a failed start outlives it
		}
		return r.warnings, r.err
	case <-ctx.Done():
		// The supervisor still owns the start; once the guest runs, end it.
		go func() {
			if r := <-ready; r.err == nil {
				m.Destroy(context.Background(), d.Name)
			}
		}()
		return nil, ctx.Err()
	}
}
