package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/store"
)

// Exit statuses of `minivirt run`: how the guest ended.
const (
	runPoweredOff  = 0   // the guest powered itself off
	runFailed      = 1   // the guest could not be started
	runCrashed     = 2   // the guest panicked or QEMU died
	runTimedOut    = 124 // --timeout passed; the guest was destroyed
	runInterrupted = 130 // SIGINT or SIGTERM; the guest was destroyed
)

func (a *app) runCommand() *cobra.Command {
	var rm, console bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "run FILE|-",
		Short: "Define and start a domain, wait for it to power off, and exit with how it ended",
		Long: `run defines and starts a domain, optionally streams its serial console, and
waits for the guest to power off. It exits 0 after a clean power-off, 1 when the
guest could not start, 2 when it crashed, 124 after --timeout and 130 when
interrupted; after a timeout or an interrupt the guest is destroyed. With --rm
the definition and its logs are removed at the end.`,
		Args: exactArgs("FILE|-"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := readDomain(args[0], a.stdin)
			if err != nil {
				return err
			}
			name := d.Name
			err = a.withStore(func(s *store.Store) error {
				if rt, err := s.GetRuntime(name); err == nil && rt.Active() {
					return fmt.Errorf("domain %s is already %s", name, rt.State)
				}
				_, err := s.Define(d)
				return err
			})
			if err != nil {
				return err
			}
			if rm {
				defer a.removeTransient(name)
			}
			logPath := filepath.Join(a.logDir(), name+".log")
			var logStart int64
			if fi, err := os.Stat(logPath); err == nil {
				logStart = fi.Size()
			}
			warnings, err := a.spawnSupervisor(cmd.Context(), name)
			if err != nil {
				return &exitError{code: runFailed, err: fmt.Errorf("run %s: %w", name, err)}
			}
			for _, w := range warnings {
				a.warn("%s", w)
			}
			_, o, err := a.observe(name)
			if err != nil {
				return err
			}

			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			waitCtx, cancel := ctx, context.CancelFunc(func() {})
			if timeout > 0 {
				waitCtx, cancel = context.WithTimeout(ctx, timeout)
			}
			defer cancel()
			consoleDone := make(chan struct{})
			if console {
				go func() {
					defer close(consoleDone)
					a.followLog(waitCtx, logPath, logStart, o)
				}()
			} else {
				close(consoleDone)
			}
			waitErr := launcher.WaitGone(waitCtx, o.Supervisor)
			<-consoleDone
			if waitErr != nil {
				if _, err := a.destroy(context.Background(), name); err != nil {
					a.warn("destroying %s: %v", name, err)
				}
				if ctx.Err() != nil {
					return &exitError{code: runInterrupted, err: fmt.Errorf("run %s: interrupted; the guest was destroyed", name)}
				}
				return &exitError{code: runTimedOut, err: fmt.Errorf("run %s: the guest did not power off within %s; it was destroyed", name, timeout)}
			}
			_, final, err := a.observe(name)
			if err != nil {
				return err
			}
			if final.Reason != "shutdown" {
				detail := final.Reason
				if final.Detail != "" {
					detail += ": " + final.Detail
				}
				return &exitError{code: runCrashed, err: fmt.Errorf("run %s: the guest ended %s (%s)", name, final.State, detail)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&rm, "rm", false, "remove the definition and its logs when the run ends")
	f.BoolVar(&console, "console", false, "stream the serial console to standard output")
	f.DurationVar(&timeout, "timeout", 0, "destroy the guest if it has not powered off after this long (0: no limit)")
	return cmd
}

// followLog copies the console log from offset on, as it grows, until the
// domain's processes are gone (QEMU keeps writing the log without its
// supervisor) or ctx ends. It serves `log -f` and `run --console`.
func (a *app) followLog(ctx context.Context, path string, offset int64, o launcher.Observed) {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for {
		if f == nil {
			if opened, err := os.Open(path); err == nil {
				f = opened
				f.Seek(offset, io.SeekStart)
			}
		}
		if f != nil {
			io.Copy(a.stdout, f)
		}
		if !proc.Alive(o.Supervisor) && !proc.Alive(o.QEMU) {
			if f != nil {
				io.Copy(a.stdout, f) // the last lines before QEMU exited
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// removeTransient undefines a domain run with --rm and removes its logs.
func (a *app) removeTransient(name string) {
	a.withStore(func(s *store.Store) error { return s.Undefine(name) })
	for _, suffix := range []string{".log", ".qemu.log", ".supervisor.log"} {
		os.Remove(filepath.Join(a.logDir(), name+suffix))
	}
}
