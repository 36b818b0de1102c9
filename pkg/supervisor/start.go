package supervisor

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/console"
	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/guestnet"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/qmp"
	"github.com/minivirt/minivirt/pkg/rundir"
	"github.com/minivirt/minivirt/pkg/store"
)

// step is one step of a start, with the undo that takes it back when a
// later step fails (firecracker-go-sdk's handler lists are the model).
type step struct {
	name string
	do   func(ctx context.Context) error
	undo func() // nil: nothing to take back
}

// runSteps runs steps in order. When one fails, the ones before it are
// undone in reverse order, and the error names the step that failed.
func runSteps(ctx context.Context, steps []step) error {
	for i, st := range steps {
		if err := st.do(ctx); err != nil {
			for j := i - 1; j >= 0; j-- {
				if steps[j].undo != nil {
					steps[j].undo()
				}
			}
			return &StepError{Step: st.name, Err: err}
		}
	}
	return nil
}

// StepError says which step of a start failed.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// starting is what the steps of one start make and hand on.
type starting struct {
	files   []*os.File // the descriptors QEMU inherits, in ExtraFiles order
	ourEnd  *os.File   // the network's end of QEMU's network socket
	log     *os.File   // QEMU's log
	logFrom int64      // where this start's lines begin in it
	shares  []*os.File // the virtiofs shares' listening sockets, for their virtiofsd
}

// steps are the steps of a start, in order.
func (s *supervisor) steps() []step {
	return []step{
		{"plan", s.makePlan, nil},
		{"look for an unrecorded QEMU", s.refuseStrays, nil},
		{"claim the runtime directory", s.claimRunDir, s.removeRunDir},
		{"claim the record", s.claimRecord, nil}, // Run records a failed start
		{"make QEMU's sockets", s.makeSockets, s.closeSockets},
		{"serve the control socket", s.serveControl, s.closeControl},
		{"serve the guest's network", s.serveNetwork, s.stopServing},
		{"serve the console", s.serveConsole, nil}, // stopServing ends it
		{"bind the shares' sockets", s.makeShareSockets, s.closeShareSockets},
		{"start QEMU", s.startQEMU, s.killQEMU},
		{"start the shares' virtiofsd", s.startVirtiofsd, s.killVirtiofsd},
		{"connect QMP", s.connectQMP, s.closeMonitor},
		{"record the running state", s.recordRunning, nil},
	}
}

// start runs the steps of a start; when one fails, nothing of the start is
// left but the record that says why (written by Run).
func (s *supervisor) start(ctx context.Context) error {
	s.starting = &starting{}
	defer func() {
		st := s.starting
		s.starting = nil
		for _, f := range st.files {
			if f != nil {
				f.Close()
			}
		}
		if st.ourEnd != nil {
			st.ourEnd.Close()
		}
		if st.log != nil {
			st.log.Close()
		}
	}()
	if err := runSteps(ctx, s.steps()); err != nil {
		return err
	}
	s.mu.Lock()
	s.ready = true
	state := s.m.State
	mon := s.mon
	s.mu.Unlock()
	s.logf("QEMU pid %d %s (%s)", s.qemuID.PID, state, s.plan.Accel)
	go s.followMonitor(mon) // events queued in pkg/qmp until now
	return nil
}

// makePlan decides how QEMU runs and builds its command line, and checks
// what the domain needs of the host.
func (s *supervisor) makePlan(ctx context.Context) error {
	var err error
	if s.self, err = proc.Self(); err != nil {
		return err
	}
	env := s.cfg.Env
	env.Incoming = s.cfg.Restore != ""
	if err := privileges(s.d, &env, s.cfg.OpenStore); err != nil {
		return err
	}
	s.cfg.Env = env
	if err := s.d.CheckStart(); err != nil {
		return err
	}
	if s.plan, err = launcher.Build(s.d, env); err != nil {
		return err
	}
	s.policy.ExitsOnPoweroff = s.plan.ExitsOnPoweroff
	warnings, err := CheckHost(ctx, s.d, qemuImgBeside(s.plan.Argv[0]))
	if err != nil {
		return err
	}
	s.plan.Warnings = append(append(s.plan.Warnings, s.d.StartWarnings()...), warnings...)
	return prepareNVRAM(s.plan.NVRAM.Path, s.plan.NVRAM.Template)
}

// refuseStrays refuses to start a second QEMU beside one of this domain
// that no record names (its supervisor was killed while starting it): it
// holds the domain's disks, and destroy ends it.
func (s *supervisor) refuseStrays(context.Context) error {
	strays, err := FindDomainQEMU(s.cfg.Env.RunDir)
	if err != nil {
		return err
	}
	if len(strays) > 0 {
		return fmt.Errorf("a QEMU of this domain (pid %d) runs that no record names (its supervisor was killed while starting it); `minivirt destroy %s` ends it", strays[0].PID, s.d.Name)
	}
	return nil
}

func (s *supervisor) claimRunDir(context.Context) error {
	return rundir.Claim(s.cfg.Env.RunDir, s.self)
}

// removeRunDir removes the runtime directory if this supervisor made it.
func (s *supervisor) removeRunDir() {
	if owner, ok := rundir.Owner(s.cfg.Env.RunDir); ok && owner == s.self {
		if err := rundir.Remove(s.cfg.Env.RunDir); err != nil {
			s.logf("%v", err)
		}
	}
}

// claimRecord makes this start the domain's current one in the store
// before QEMU exists: from now on the record names this supervisor, and
// then its QEMU.
func (s *supervisor) claimRecord(context.Context) error {
	s.mu.Lock()
	s.m = Machine{State: store.StatePaused, Reason: "starting up"}
	s.runtime = store.Runtime{Accel: s.plan.Accel, Network: s.plan.Network, NetBackend: string(s.plan.NetBackend), NetFallback: s.plan.NetFallback, RunDir: s.cfg.Env.RunDir, Supervisor: s.self, Since: time.Now().UTC()}
	s.mu.Unlock()
	if err := s.rec.claim(s.snapshot(), s.self); err != nil {
		return err
	}
	s.claimed = true
	return nil
}

// makeSockets creates every socket QEMU inherits, and on minivirt's own
// network the socket pair of its NIC.
func (s *supervisor) makeSockets(context.Context) error {
	ends := make(map[int]*os.File)
	closeEnds := func() {
		for _, f := range ends {
			f.Close()
		}
	}
	for _, pair := range []struct {
		fd   int
		what string
		ours **os.File
	}{{s.plan.NetFD, "network", &s.starting.ourEnd}} {
		if pair.fd == 0 {
			continue
		}
		qemuEnd, ourEnd, err := socketPair(pair.what)
		if err != nil {
			closeEnds()
			return err
		}
		ends[pair.fd], *pair.ours = qemuEnd, ourEnd
	}
	files, err := s.plan.Files(func(sock launcher.Socket) (*os.File, error) { return s.listenFile(sock.Path) }, ends)
	if err != nil {
		closeEnds()
		return err
	}
	s.starting.files = files
	return nil
}

// closeSockets removes the sockets QEMU would have inherited.
func (s *supervisor) closeSockets() {
	for _, sock := range s.plan.Sockets {
		s.removeSocket(sock.Path)
	}
}

// serveConsole shares the primary console: the supervisor is the one
// client of QEMU's console socket (connected before QEMU runs, so that it
// misses nothing) and shares it with its own clients, who connect to the
// console socket, or through the control socket (OpConsole, `minivirt
// console`). Should the supervisor die, QEMU's socket takes another client.
func (s *supervisor) serveConsole(ctx context.Context) error {
	if !s.plan.HasSocket(s.plan.Paths.QEMUConsole) {
		return nil // the first console has a <source> of its own
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", s.plan.Paths.QEMUConsole)
	if err != nil {
		return fmt.Errorf("QEMU's console: %w", err)
	}
	l, err := s.listenUnix(s.plan.Paths.Console)
	if err != nil {
		conn.Close()
		return err
	}
	s.console, s.consoleSock = console.New(conn), l
	go func() {
		err := s.console.Run(context.Background())
		conn.Close()
		if err != nil {
			s.logf("console: %v", err)
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			// The socket's clients are programs (socat, scripts) with no
			// way to ask: each takes the input as it connects, so that a
			// script's input never waits on a client that is leaving.
			s.console.Attach(c, true)
		}
	}()
	return nil
}

// serveControl answers the CLI from now on: "starting" until ready.
func (s *supervisor) serveControl(context.Context) error {
	control, err := s.listenUnix(s.plan.Paths.Control)
	if err != nil {
		return err
	}
	s.control = control
	go serveControl(control, s.handle)
	return nil
}

// serveNetwork serves the guest's network: the relay socket for the
// helper's handoffs, and on minivirt's own network the stack at the other
// end of QEMU's NIC and the forwards.
func (s *supervisor) serveNetwork(context.Context) error {
	s.net = guestnet.New(s.d, s.sockets())
	relay, err := s.listenUnix(s.plan.Paths.Relay)
	if err != nil {
		return err
	}
	s.relay = relay
	go s.net.Relay().Serve(context.Background(), relay.UnixListener)
	if err := prepareConfinement(s.cfg.Env, s.plan, s.cfg.Env.Self); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopNet = cancel
	switch {
	case s.plan.NetBackend == domain.BackendVhostUser:
		// QEMU connects as it starts and waits for the device's answers
		// before it goes on. The socket is 0600 in the domain's runtime
		// directory, and only QEMU's own connection (its pid, by
		// SO_PEERCRED) becomes the device; the socket goes once it has.
		l, err := s.listenUnix(s.plan.Paths.Net)
		if err != nil {
			return err
		}
		s.netSock = l
		s.netstack = true
		s.qemuStarted = make(chan struct{})
		go func() {
			defer l.Close()
			for {
				c, err := l.Accept()
				if err != nil {
					if ctx.Err() == nil {
						s.logf("network: QEMU did not connect (%v)", err)
					}
					return
				}
				if pid, ok := s.fromQEMU(ctx, c); !ok {
					c.Close()
					if ctx.Err() != nil {
						return
					}
					s.logf("network: refused a connection to the NIC's socket from pid %d: not QEMU", pid)
					continue
				}
				l.Close()
				serve, err := s.net.Attach(c, domain.BackendVhostUser, s.logf)
				if err != nil {
					c.Close()
					s.logf("network: %v", err)
					return
				}
				err = serve(ctx)
				c.Close()
				s.logf("network: QEMU's end closed (%v)", err)
				return
			}
		}()
	case s.starting.ourEnd != nil:
		conn, err := net.FileConn(s.starting.ourEnd)
		if err != nil {
			return err
		}
		serve, err := s.net.Attach(conn, domain.BackendStream, s.logf)
		if err != nil {
			conn.Close()
			return err
		}
		s.netstack = true
		go func() {
			err := serve(ctx)
			s.logf("network: QEMU's end closed (%v)", err)
		}()
	default:
		return nil
	}
	for _, f := range s.d.Forwards() {
		if err := s.net.AddForward(f); err != nil {
			return err
		}
	}
	return nil
}

// fromQEMU reports whether c comes from this start's QEMU, once it runs,
// and the pid that connected.
func (s *supervisor) fromQEMU(ctx context.Context, c net.Conn) (int32, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	rc.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if err != nil || cred == nil {
		return 0, false
	}
	select {
	case <-s.qemuStarted:
	case <-ctx.Done():
		return cred.Pid, false
	}
	return cred.Pid, s.qemu != nil && int(cred.Pid) == s.qemu.Process.Pid
}

// startQEMU starts QEMU (held before its first instruction, -S) with only
// the descriptors and environment meant for it, and records its identity
// before anything can kill it unseen.
func (s *supervisor) startQEMU(ctx context.Context) error {
	env := s.cfg.Env
	if err := os.MkdirAll(env.LogDir, 0o700); err != nil {
		return err
	}
	qemuLog, err := os.OpenFile(filepath.Join(env.LogDir, s.d.Name+".qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	s.starting.log = qemuLog
	s.starting.logFrom, _ = qemuLog.Seek(0, io.SeekEnd)
	fmt.Fprintf(qemuLog, "minivirt: %s: starting %s\n", time.Now().UTC().Format(time.RFC3339), strings.Join(s.plan.Argv, " "))

	cmd := exec.Command(s.plan.Argv[0], s.plan.Argv[1:]...)
	cmd.Stdout, cmd.Stderr = qemuLog, qemuLog
	// QEMU gets the descriptors in files and an environment of its own,
	// nothing of whoever ran minivirt (a rig's test process included).
	if err := proc.CloseOnExec(); err != nil {
		return fmt.Errorf("closing inherited descriptors: %w", err)
	}
	cmd.Env = proc.Environ(proc.SafePath, s.plan.Env...)
	cmd.ExtraFiles = s.starting.files
	cmd.Dir = "/"
	// QEMU gets its own session: it must outlive a killed supervisor.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if s.cfg.DieWithParent {
		// The death signal follows the thread that forked: keep this
		// goroutine on one thread while it does (threads outlive unlocking).
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting QEMU: %w", err)
	}
	s.qemu = cmd
	if s.qemuStarted != nil {
		close(s.qemuStarted) // the NIC's socket may take QEMU's connection now
	}
	s.qemuID, _ = proc.Lookup(cmd.Process.Pid)
	go func() {
		s.waited = cmd.Wait()
		close(s.done)
	}()
	for _, f := range s.starting.files { // QEMU has them now
		f.Close()
	}
	s.starting.files = nil
	// QEMU's identity is recorded before it runs a guest instruction: from
	// here on destroy finds it even if this process dies.
	s.mu.Lock()
	s.runtime.QEMU = s.qemuID
	s.mu.Unlock()
	recCtx, cancel := context.WithTimeout(ctx, qmpConnectTimeout)
	defer cancel()
	if err := s.rec.flush(recCtx, s.snapshot()); err != nil {
		return fmt.Errorf("recording QEMU's pid: %w", err)
	}
	return nil
}

// killQEMU ends a QEMU whose start failed and waits for it.
func (s *supervisor) killQEMU() {
	if s.qemu == nil {
		return
	}
	s.qemu.Process.Kill()
	<-s.done
}

// connectQMP connects to QEMU's monitor and lets the guest's CPUs run,
// unless the start holds them (paused). A failure is told in QEMU's own
// words.
func (s *supervisor) connectQMP(ctx context.Context) error {
	dialCtx, cancel := context.WithTimeout(ctx, qmpConnectTimeout)
	defer cancel()
	go func() { // stop dialling as soon as QEMU is gone
		select {
		case <-s.done:
			cancel()
		case <-dialCtx.Done():
		}
	}()
	mon, err := qmp.Dial(dialCtx, s.plan.Paths.QMP)
	if err != nil {
		return s.qemuFailed(err)
	}
	run, machine := !s.cfg.Paused, Booted()
	if s.cfg.Restore != "" {
		running, err := s.restore(ctx, mon, s.cfg.Restore)
		if err != nil {
			mon.Close()
			return s.qemuFailed(err)
		}
		run, machine = run && running, Restored()
	}
	callCtx, cancel2 := context.WithTimeout(ctx, qmpCallTimeout)
	defer cancel2()
	if s.cfg.Restore == "" {
		if err := s.prepareDevices(callCtx, mon); err != nil {
			mon.Close()
			return s.qemuFailed(err)
		}
	}
	if run {
		if err := qmp.Cont(callCtx, mon); err != nil {
			mon.Close()
			return s.qemuFailed(err)
		}
	} else {
		machine = StartedPaused()
	}
	s.mu.Lock()
	s.mon, s.m = mon, machine
	s.runtime.Since = time.Now().UTC()
	s.mu.Unlock()
	return nil
}

// qemuFailed says why a start went wrong after QEMU started: how QEMU
// ended, if it did, and its last words.
func (s *supervisor) qemuFailed(what error) error {
	select {
	case <-s.done:
		text, _ := exitText(s.waited)
		what = fmt.Errorf("QEMU %s", text)
	case <-time.After(quitGrace):
	}
	words := qemuWords(s.starting.log.Name(), s.starting.logFrom)
	if v := s.virtiofsdWords(); v != "" {
		words += " | virtiofsd: " + v
	}
	return fmt.Errorf("%w: %s", what, words)
}

func (s *supervisor) closeMonitor() {
	if mon := s.monitor(); mon != nil {
		mon.Close()
	}
}

// recordRunning reports the start only once the store says the domain
// runs (or is paused, as asked).
func (s *supervisor) recordRunning(ctx context.Context) error {
	recCtx, cancel := context.WithTimeout(ctx, qmpConnectTimeout)
	defer cancel()
	if err := s.rec.flush(recCtx, s.snapshot()); err != nil {
		return fmt.Errorf("recording the running state: %w", err)
	}
	return nil
}
