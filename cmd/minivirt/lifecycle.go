package main

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

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/store"
)

const (
	defaultStopTimeout = 60 * time.Second
	startTimeout       = 90 * time.Second
	supervisorCommand  = "__supervise"
)

func (a *app) domainRunDir(name string) string { return filepath.Join(a.runDir, name) }
func (a *app) logDir() string                  { return filepath.Join(a.stateDir, "logs") }

// observe loads a domain and its reconciled runtime record.
func (a *app) observe(name string) (*domain.Domain, launcher.Observed, error) {
	var d *domain.Domain
	var o launcher.Observed
	err := a.withStore(func(s *store.Store) error {
		var err error
		if d, err = s.Get(name); err != nil {
			return userError(err)
		}
		o, err = launcher.Observe(s, d, a.domainRunDir(name))
		return err
	})
	return d, o, err
}

// running loads a domain that must be running under a live supervisor.
func (a *app) running(name string) (*domain.Domain, launcher.Observed, error) {
	d, o, err := a.observe(name)
	if err != nil {
		return nil, o, err
	}
	if !o.Active() {
		return nil, o, fmt.Errorf("domain %s is not running", name)
	}
	if !o.Supervised {
		return nil, o, &unsupervisedError{name, o.Supervisor.PID}
	}
	return d, o, nil
}

// unsupervisedError: QEMU runs but its supervisor is gone.
type unsupervisedError struct {
	name string
	pid  int
}

func (e *unsupervisedError) Error() string {
	return fmt.Sprintf("domain %s is unsupervised (its supervisor pid %d is gone); only `minivirt destroy %s` works now", e.name, e.pid, e.name)
}

func (a *app) call(ctx context.Context, name string, req launcher.Request) (launcher.Response, error) {
	return launcher.Call(ctx, launcher.PathsIn(a.domainRunDir(name)).Control, req)
}

func (a *app) startCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "start NAME",
		Short: "Start a domain; returns once its CPUs run under supervision",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			_, o, err := a.observe(name)
			if err != nil {
				return err
			}
			if o.Active() {
				return fmt.Errorf("domain %s is already %s", name, o.State)
			}
			if _, err := exec.LookPath(qemuBinary); err != nil {
				return fmt.Errorf("%s not found: install it with `make deps` (Debian package qemu-system-x86)", qemuBinary)
			}
			warnings, err := a.spawnSupervisor(cmd.Context(), name)
			if err != nil {
				return fmt.Errorf("start %s: %w", name, err)
			}
			for _, w := range warnings {
				a.warn("%s", w)
			}
			fmt.Fprintf(a.stdout, "Domain %s started\n", name)
			return nil
		},
	}
}

const qemuBinary = "qemu-system-x86_64"

// readyMessage is what the supervisor writes on its ready pipe.
type readyMessage struct {
	Warnings []string `json:"warnings,omitempty"`
	Error    string   `json:"error,omitempty"`
}

// spawnSupervisor starts the detached supervisor of one domain and waits for
// its word on a pipe: the guest runs, or why it does not.
func (a *app) spawnSupervisor(ctx context.Context, name string) ([]string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(a.logDir(), 0o700); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(a.logDir(), name+".supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	cmd := exec.Command(self, "--state-dir", a.stateDir, "--run-dir", a.runDir, "--lock-timeout", a.lockTimeout.String(), supervisorCommand, name)
	cmd.Stdout, cmd.Stderr = logf, logf
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

// superviseCommand is the hidden command the detached supervisor runs.
func (a *app) superviseCommand() *cobra.Command {
	return &cobra.Command{
		Use:    supervisorCommand + " NAME",
		Hidden: true,
		Args:   exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			ready := os.NewFile(3, "ready")
			syscall.CloseOnExec(3)
			logger := log.New(a.stderr, "supervisor "+name+": ", log.LstdFlags|log.Lmicroseconds)
			report := func(warnings []string, err error) {
				msg := readyMessage{Warnings: warnings}
				if err != nil {
					msg.Error = err.Error()
					logger.Printf("start failed: %v", err)
				}
				json.NewEncoder(ready).Encode(msg)
				ready.Close()
			}
			var d *domain.Domain
			err := a.withStore(func(s *store.Store) error {
				var err error
				d, err = s.Get(name)
				return err
			})
			if err != nil {
				report(nil, err)
				return err
			}
			self, err := os.Executable()
			if err != nil {
				report(nil, err)
				return err
			}
			kvm, why := launcher.DetectKVM(os.Getenv)
			qemu, _ := exec.LookPath(qemuBinary)
			env := launcher.Env{QEMU: qemu, Self: self, RunDir: a.domainRunDir(name), LogDir: a.logDir(), KVM: kvm, KVMReason: why}
			return launcher.Supervise(context.Background(), launcher.Config{
				Domain:    d,
				Env:       env,
				OpenStore: func() (*store.Store, error) { return store.Open(a.stateDir, a.lockTimeout) },
				Ready:     report,
				Log:       logger,
			})
		},
	}
}

func (a *app) shutdownCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "shutdown NAME",
		Short: "Press the ACPI power button and wait until the domain is shut off",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := a.shutdown(cmd.Context(), name, timeout); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Domain %s shut off\n", name)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", defaultStopTimeout, "how long to wait for the guest to power off")
	return cmd
}

var errShutdownTimeout = errors.New("shutdown timed out")

func (a *app) shutdown(ctx context.Context, name string, timeout time.Duration) error {
	_, o, err := a.running(name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := a.call(ctx, name, launcher.Request{Op: launcher.OpShutdown}); err != nil {
		return fmt.Errorf("shutdown %s: %w", name, err)
	}
	if err := launcher.WaitGone(ctx, o.Supervisor); err != nil {
		return fmt.Errorf("domain %s did not shut off within %s: the guest ignores the ACPI power button; use `minivirt stop` or `minivirt destroy`: %w", name, timeout, errShutdownTimeout)
	}
	return nil
}

func (a *app) destroyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "destroy NAME",
		Short: "Stop a domain at once, as pulling the plug",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			msg, err := a.destroy(cmd.Context(), name)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Domain %s destroyed%s\n", name, msg)
			return nil
		},
	}
}

func (a *app) destroy(ctx context.Context, name string) (string, error) {
	d, o, err := a.observe(name)
	if err != nil {
		return "", err
	}
	if o.Reconciled {
		return " (its QEMU was already gone; cleaned up)", nil
	}
	if !o.Active() {
		return "", fmt.Errorf("domain %s is not running", name)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if o.Supervised {
		_, err := a.call(ctx, name, launcher.Request{Op: launcher.OpDestroy})
		if err == nil {
			if err := launcher.WaitGone(ctx, o.Supervisor); err != nil {
				return "", fmt.Errorf("destroy %s: the supervisor did not finish: %w", name, err)
			}
			return "", nil
		}
		a.warn("supervisor of %s did not answer (%v); killing QEMU by pid", name, err)
	}
	err = a.withStore(func(s *store.Store) error {
		return launcher.DestroyUnsupervised(ctx, s, d, o, a.domainRunDir(name))
	})
	if err != nil {
		return "", fmt.Errorf("destroy %s: %w", name, err)
	}
	return "", nil
}

func (a *app) stopCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Shut a domain down, and destroy it if the guest ignores the power button",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			err := a.shutdown(cmd.Context(), name, timeout)
			var unsupervised *unsupervisedError
			switch {
			case err == nil:
				fmt.Fprintf(a.stdout, "Domain %s shut off\n", name)
				return nil
			case errors.Is(err, errShutdownTimeout), errors.As(err, &unsupervised):
			default:
				return err
			}
			msg, err := a.destroy(cmd.Context(), name)
			if err != nil {
				return err
			}
			if msg == "" {
				msg = fmt.Sprintf(" (it did not shut down within %s)", timeout)
			}
			fmt.Fprintf(a.stdout, "Domain %s destroyed%s\n", name, msg)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", defaultStopTimeout, "how long to wait for the guest to power off before destroying it")
	return cmd
}

// simpleCommand is a verb that is one control request.
func (a *app) simpleCommand(use, short string, op, done string) *cobra.Command {
	return &cobra.Command{
		Use:   use + " NAME",
		Short: short,
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if _, _, err := a.running(name); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			if _, err := a.call(ctx, name, launcher.Request{Op: op}); err != nil {
				return fmt.Errorf("%s %s: %w", use, name, err)
			}
			fmt.Fprintf(a.stdout, "Domain %s %s\n", name, done)
			return nil
		},
	}
}

func (a *app) qmpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "qmp NAME JSON",
		Short: "Send a raw QMP command through the supervisor and print QEMU's reply",
		Args:  exactArgs("NAME", "JSON"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, raw := args[0], []byte(args[1])
			var probe struct {
				Execute string `json:"execute"`
			}
			if err := json.Unmarshal(raw, &probe); err != nil || probe.Execute == "" {
				return fmt.Errorf(`qmp: %q is not a QMP command; give e.g. '{"execute":"query-status"}'`, args[1])
			}
			if _, _, err := a.running(name); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			resp, err := a.call(ctx, name, launcher.Request{Op: launcher.OpQMP, QMP: raw})
			if err != nil {
				return fmt.Errorf("qmp %s: %w", name, err)
			}
			_, err = fmt.Fprintf(a.stdout, "%s\n", resp.QMP)
			return err
		},
	}
}

// statusReport is `status -o json`.
type statusReport struct {
	Name          string          `json:"name"`
	UUID          string          `json:"uuid"`
	State         string          `json:"state"`
	Reason        string          `json:"reason,omitempty"`
	Detail        string          `json:"detail,omitempty"`
	Accel         string          `json:"accel,omitempty"`
	Network       string          `json:"network,omitempty"`
	QEMUPID       int             `json:"qemu_pid"`
	SupervisorPID int             `json:"supervisor_pid"`
	Supervised    bool            `json:"supervised"`
	Since         time.Time       `json:"since"`
	VMChannels    []vmchannelItem `json:"vmchannels"`
}

func (a *app) statusCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a domain's state, processes and accelerator",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			d, o, err := a.observe(args[0])
			if err != nil {
				return err
			}
			r := statusReport{Name: d.Name, UUID: d.UUID, State: o.State, Reason: o.Reason, Detail: o.Detail,
				Since: o.Since, VMChannels: a.vmchannelItems(cmd.Context(), d, o)}
			if o.Active() {
				r.Accel, r.Network, r.Supervised = o.Accel, o.Network, o.Supervised
				if o.QEMUAlive {
					r.QEMUPID = o.QEMU.PID
				}
				if o.Supervised {
					r.SupervisorPID = o.Supervisor.PID
				}
			}
			if output == "json" {
				return a.printJSON(r)
			}
			w := a.stdout
			fmt.Fprintf(w, "Name:        %s\nUUID:        %s\n", r.Name, r.UUID)
			state := r.State
			if r.Reason != "" {
				state += " (" + r.Reason + ")"
			}
			fmt.Fprintf(w, "State:       %s\n", state)
			if r.Detail != "" {
				fmt.Fprintf(w, "Detail:      %s\n", r.Detail)
			}
			if o.Active() {
				network := r.Network
				if network == "" {
					network = "none"
				}
				fmt.Fprintf(w, "Accel:       %s\nNetwork:     %s\nQEMU pid:    %d\n", r.Accel, network, r.QEMUPID)
				if r.Supervised {
					fmt.Fprintf(w, "Supervisor:  pid %d\n", r.SupervisorPID)
				} else {
					fmt.Fprintf(w, "Supervisor:  gone (unsupervised; `minivirt destroy %s` still works)\n", r.Name)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: table or json")
	return cmd
}

func (a *app) logCommand() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "log NAME",
		Short: "Print a domain's serial console log; -f follows it while the domain runs",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			_, o, err := a.observe(name)
			if err != nil {
				return err
			}
			path := filepath.Join(a.logDir(), name+".log")
			if follow {
				a.followLog(cmd.Context(), path, 0, o)
				return nil
			}
			f, err := os.Open(path)
			if errors.Is(err, os.ErrNotExist) {
				return nil // never started: no console output yet
			}
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(a.stdout, f)
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new console output until the domain stops")
	return cmd
}
