package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/pkg/proc"
)

// The virtiofs shares: one QEMU virtiofsd per <filesystem> with driver
// virtiofs, on a socket this supervisor binds and hands it.
//
// A virtiofsd runs only beside a QEMU that connected to it, and ends with
// that connection: it is started once QEMU has started (QEMU's connection
// waits in the socket's backlog, its vhost-user handshake with it), and it
// exits by itself when QEMU quits or is killed, supervised or not. So
// destroy has nothing more to find than QEMU, and no virtiofsd outlives its
// guest.

// virtiofsdGrace is how long a virtiofsd has to exit by itself once QEMU
// has: it does at once, when the connection closes.
const virtiofsdGrace = 5 * time.Second

// makeShareSockets binds the socket of each virtiofs share before QEMU,
// which connects to it as it starts.
func (s *supervisor) makeShareSockets(context.Context) error {
	if len(s.plan.VirtioFS) > 0 && os.Geteuid() != 0 {
		v := s.plan.VirtioFS[0]
		return fmt.Errorf("filesystem %s driver virtiofs: QEMU's virtiofsd sandboxes itself in namespaces, which needs root; run minivirt as root, or use driver type='path' (9p)", v.Tag)
	}
	for _, v := range s.plan.VirtioFS { // before any socket: a failing step's undo does not run
		if _, err := os.Stat(v.Binary); err != nil {
			return fmt.Errorf("filesystem %s driver virtiofs: %s: %w (Debian's qemu-system-common has it)", v.Tag, v.Binary, unwrap(err))
		}
	}
	for _, v := range s.plan.VirtioFS {
		f, err := s.listenFile(v.Socket)
		if err != nil {
			s.closeShareSockets()
			return fmt.Errorf("filesystem %s: %w", v.Tag, err)
		}
		s.starting.shares = append(s.starting.shares, f)
	}
	return nil
}

// closeShareSockets closes and removes the shares' sockets of a start
// that failed.
func (s *supervisor) closeShareSockets() {
	for _, f := range s.starting.shares {
		f.Close()
	}
	s.starting.shares = nil
	s.removeShareSockets()
}

func (s *supervisor) removeShareSockets() {
	for _, v := range s.plan.VirtioFS {
		if err := s.removeSocket(v.Socket); err != nil {
			s.logf("%v", err)
		}
	}
}

// startVirtiofsd starts a virtiofsd for each share, on the socket QEMU has
// connected to. Its log is the domain's NAME.virtiofsd.log.
func (s *supervisor) startVirtiofsd(ctx context.Context) error {
	if len(s.plan.VirtioFS) == 0 {
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(s.cfg.Env.LogDir, s.d.Name+".virtiofsd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	for i, v := range s.plan.VirtioFS {
		args := []string{"--fd=3", "-o", "source=" + v.Source, "-o", "cache=" + v.Cache, "-o", "sandbox=" + v.Sandbox}
		if v.XAttr {
			args = append(args, "-o", "xattr")
		}
		cmd := exec.Command(v.Binary, args...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.ExtraFiles = []*os.File{s.starting.shares[i]}
		cmd.Env = proc.Environ(proc.SafePath)
		cmd.Dir = "/"
		// Like QEMU, it outlives a killed supervisor: the guest's files
		// stay reachable while QEMU runs.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		fmt.Fprintf(logf, "minivirt: %s: starting %s %v for %s\n", time.Now().UTC().Format(time.RFC3339), v.Binary, args, v.Tag)
		if err := cmd.Start(); err != nil {
			s.killVirtiofsd() // the shares started before this one: the step's undo does not run
			return fmt.Errorf("filesystem %s: starting virtiofsd: %w", v.Tag, err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		s.virtiofsd = append(s.virtiofsd, helperProcess{cmd: cmd, done: done})
	}
	for _, f := range s.starting.shares { // the virtiofsds have them now
		f.Close()
	}
	s.starting.shares = nil
	return nil
}

// virtiofsdWords is the last thing a virtiofsd that has exited wrote to its
// log, or "": why QEMU's vhost-user handshake with it failed.
func (s *supervisor) virtiofsdWords() string {
	for _, h := range s.virtiofsd {
		select {
		case <-h.done:
			data, err := os.ReadFile(filepath.Join(s.cfg.Env.LogDir, s.d.Name+".virtiofsd.log"))
			if err != nil {
				return ""
			}
			lines := strings.Split(strings.TrimSpace(string(data)), "\n")
			return strings.TrimSpace(lines[len(lines)-1])
		default:
		}
	}
	return ""
}

// helperProcess is a process the supervisor runs beside QEMU.
type helperProcess struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// stopVirtiofsd waits for the virtiofsds to exit, as they do once QEMU
// has, and kills one that does not.
func (s *supervisor) stopVirtiofsd() {
	for _, h := range s.virtiofsd {
		select {
		case <-h.done:
		case <-time.After(virtiofsdGrace):
			s.logf("virtiofsd pid %d did not exit with QEMU; killing it", h.cmd.Process.Pid)
			h.cmd.Process.Kill()
			<-h.done
		}
	}
	s.virtiofsd = nil
	s.removeShareSockets()
}

// killVirtiofsd ends the virtiofsds of a start that failed.
func (s *supervisor) killVirtiofsd() {
	for _, h := range s.virtiofsd {
		if err := h.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			s.logf("killing virtiofsd: %v", err)
		}
		<-h.done
	}
	s.virtiofsd = nil
}
