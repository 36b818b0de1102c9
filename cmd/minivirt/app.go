package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/minivirt/minivirt/pkg/manager"
)

const defaultLockTimeout = 10 * time.Second

// app is the state one command line shares between its flags and its verbs.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	stateDir, runDir string
	lockTimeout      time.Duration

	mgr  *manager.Manager // the lifecycle engine, once the directories are known
	self string           // this minivirt binary, once the directories are known

	// execSSH runs the system's ssh (path, from PATH) with argv in place of
	// this process, and returns only when it could not. nil: execve(2),
	// with this process's environment. Tests set it to see the argv.
	execSSH func(path string, argv []string) error
}

func (a *app) resolveDirs() error {
	d, err := resolveDirs(a.stateDir, a.runDir, os.Getenv, os.Geteuid())
	if err != nil {
		return err
	}
	a.stateDir, a.runDir = d.state, d.run
	self, err := os.Executable()
	if err != nil {
		return err
	}
	a.self = self
	a.mgr = &manager.Manager{StateDir: a.stateDir, RunDir: a.runDir, LockTimeout: a.lockTimeout,
		Spawn: manager.Detached{Binary: self, Args: a.superviseArgs}}
	return nil
}

// superviseArgs is the command line of a detached supervisor.
func (a *app) superviseArgs(m *manager.Manager, name string, opt manager.StartOptions) []string {
	args := []string{"--state-dir", m.StateDir, "--run-dir", m.RunDir, "--lock-timeout", m.LockTimeout.String(), supervisorCommand, name}
	if opt.Paused {
		args = append(args, "--paused")
	}
	if opt.Restore != "" {
		args = append(args, "--restore", opt.Restore)
	}
	if opt.RestoreDefinition {
		args = append(args, "--restore-definition")
	}
	return args
}

func (a *app) warn(format string, args ...any) {
	fmt.Fprintf(a.stderr, "minivirt: warning: %s\n", oneLine(fmt.Sprintf(format, args...)))
}

func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// userError words the engine's errors for the command line.
func userError(err error) error {
	if errors.Is(err, manager.ErrNotFound) {
		return fmt.Errorf("%w; see `minivirt list --all`", err)
	}
	return err
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}

// outputFormat checks the -o flag.
func outputFormat(o string) error {
	if o != "" && o != "json" && o != "table" {
		return fmt.Errorf("output format %q: use table or json", o)
	}
	return nil
}
