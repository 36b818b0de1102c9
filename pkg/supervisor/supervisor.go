// Package supervisor runs and follows the QEMU process of one domain.
//
// A supervisor claims the domain's runtime directory (rundir.go), creates
// every socket before QEMU starts and hands the listeners to QEMU
// (sockets.go), starts QEMU with its log (qemu.go), follows QMP events and
// re-connects a lost monitor, answers the CLI on a control socket
// (control.go), and records every change of state in the store. What an
// event or a request leads to is decided by Step (machine.go), a pure
// function; this file only carries its decisions out.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/qmp"
	"github.com/minivirt/minivirt/pkg/rundir"
	"github.com/minivirt/minivirt/pkg/store"
	"github.com/minivirt/minivirt/pkg/usernet"
	"github.com/minivirt/minivirt/pkg/vmchannel"
)

// Config is what Run needs.
type Config struct {
	Domain *domain.Domain
	Env    launcher.Env
	// OpenStore opens the state database; the supervisor holds it only for
	// the moment of each update.
	OpenStore func() (*store.Store, error)
	// Ready is called once: with the start's warnings when the guest CPUs
	// run (paused: when QEMU is up with them held), or with the reason the
	// start failed.
	Ready func(warnings []string, err error)
	Log   *log.Logger
	// DieWithParent kills QEMU when the process that runs the supervisor
	// dies, for supervisors that run inside a test binary: QEMU must not
	// outlive a test that was killed. Not when QEMU drops root with
	// -runas: the kernel clears the death signal on that uid change, and
	// QEMU 7.2 has no exit-with-parent; the rig's Close ends it there.
	DieWithParent bool
	// Paused holds the guest's CPUs once QEMU is up (virsh start
	// --paused): QEMU started with -S simply gets no cont.
	Paused bool
}

// Timeouts of the supervisor's own waits.
const (
	qmpConnectTimeout = 30 * time.Second
	qmpCallTimeout    = 10 * time.Second
	quitGrace         = 5 * time.Second
	// finalRecordTimeout bounds the retries of the last record: long
	// enough to outlast any burst of other minivirt commands.
	finalRecordTimeout = 5 * time.Minute
)

type supervisor struct {
	cfg    Config
	d      *domain.Domain
	policy Policy
	plan   launcher.Plan
	qemu   *exec.Cmd
	qemuID proc.ID
	self   proc.ID
	relay  *vmchannel.Relay
	// network is minivirt's own user network, for domain.NetworkNetstack.
	// QEMU 7.2's -netdev stream cannot reconnect: it lives and dies with
	// this process.
	network *usernet.Network
	// listeners the supervisor serves itself (relay): closed by cleanup,
	// since a rig runs the supervisor inside a longer-lived process.
	listeners []net.Listener
	// control answers the CLI; it stays open until the final record lands.
	control net.Listener
	done    chan struct{} // closed when QEMU has exited
	waited  error         // cmd.Wait's result; read only after done is closed
	rec     *recorder
	// claimed is set once the store records this start (paused, starting
	// up); a start that fails after it records why.
	claimed bool

	mu      sync.Mutex
	m       Machine
	mon     qmp.Monitor // the current QMP connection; replaced when lost
	ready   bool
	runtime store.Runtime // the fields of the record that Step does not own
	// live is the domain as it runs, with the changes made live since
	// start (s.d is the definition it started from).
	live *domain.Domain
	// forwards are the host listeners of inbound forwards, by name.
	forwards map[string]forward
	// changeMu serialises live changes: each reads the live domain,
	// changes the network and stores the result before the next starts.
	changeMu sync.Mutex
	// shutdownSeq counts shutdown requests, so that only the newest
	// one's timer acts.
	shutdownSeq uint64
}

// forward is one inbound forward the supervisor serves.
type forward struct {
	cfg domain.Forward
	l   net.Listener
}

// Run starts the domain's QEMU and follows it until QEMU exits. It creates
// the runtime directory and every socket before QEMU starts, and removes
// what it made when QEMU is gone.
func Run(ctx context.Context, cfg Config) error {
	s := &supervisor{cfg: cfg, d: cfg.Domain, live: cfg.Domain, done: make(chan struct{}), forwards: map[string]forward{},
		policy: Policy{OnPoweroff: cfg.Domain.OnPoweroff, OnReboot: cfg.Domain.OnReboot, OnCrash: cfg.Domain.OnCrash}}
	s.rec = newRecorder(cfg.Domain.Name, cfg.OpenStore, cfg.Log)
	if err := s.start(ctx); err != nil {
		if s.claimed {
			// The record said "starting up": it says why the start failed.
			ctx, cancel := context.WithTimeout(context.Background(), qmpConnectTimeout)
			rt := store.Runtime{State: store.StateShutoff, Reason: "failed", Detail: err.Error(), Accel: s.plan.Accel}
			if ferr := s.rec.flush(ctx, rt); ferr != nil {
				s.logf("recording the failed start: %v", ferr)
			}
			cancel()
		}
		s.rec.stop()
		cfg.Ready(nil, err)
		return err
	}
	cfg.Ready(s.plan.Warnings, nil)
	return s.follow()
}

func (s *supervisor) logf(format string, args ...any) { s.cfg.Log.Printf(format, args...) }

func (s *supervisor) start(ctx context.Context) (err error) {
	env := s.cfg.Env
	if s.self, err = proc.Self(); err != nil {
		return err
	}
	if err := privileges(s.d, &env, s.cfg.OpenStore); err != nil {
		return err
	}
	s.cfg.Env = env
	if s.plan, err = launcher.Build(s.d, env); err != nil {
		return err
	}
	s.policy.ExitsOnPoweroff = s.plan.ExitsOnPoweroff
	warnings, err := CheckHost(s.d)
	if err != nil {
		return err
	}
	s.plan.Warnings = append(s.plan.Warnings, warnings...)
	if err := prepareNVRAM(s.plan.NVRAM.Path, s.plan.NVRAM.Template); err != nil {
		return err
	}
	// A QEMU of this domain that no record names (its supervisor was
	// killed while starting it) holds the domain's disks: refuse, and
	// leave it for destroy.
	if strays, err := FindDomainQEMU(env.RunDir); err != nil {
		return err
	} else if len(strays) > 0 {
		return fmt.Errorf("a QEMU of this domain (pid %d) runs that no record names (its supervisor was killed while starting it); `minivirt destroy %s` ends it", strays[0].PID, s.d.Name)
	}
	if err := rundir.Claim(env.RunDir, s.self); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.cleanup()
		}
	}()
	// The store learns of this start before QEMU exists: from now on a
	// record of it names this supervisor, and then its QEMU.
	s.mu.Lock()
	s.m = Machine{State: store.StatePaused, Reason: "starting up"}
	s.runtime = store.Runtime{Accel: s.plan.Accel, Network: s.plan.Network, RunDir: env.RunDir, Supervisor: s.self, Since: time.Now().UTC()}
	s.mu.Unlock()
	if err := s.rec.claim(s.snapshot(), s.self); err != nil {
		return err
	}
	s.claimed = true

	// Every socket exists before QEMU starts; QEMU inherits the listeners
	// (and, on minivirt's own network, its end of the network's socket).
	var netEnd, ourEnd *os.File
	if s.plan.NetFD != 0 {
		if netEnd, ourEnd, err = socketPair(); err != nil {
			return err
		}
		defer ourEnd.Close() // the network holds its own copy
	}
	files, err := s.plan.Files(func(sock launcher.Socket) (*os.File, error) { return s.listenFile(sock.Path) }, netEnd)
	if err != nil {
		if netEnd != nil {
			netEnd.Close()
		}
		return err
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	// The control socket answers from now on: "starting" until ready.
	control, err := s.listenUnix(s.plan.Paths.Control)
	if err != nil {
		return err
	}
	s.control = control
	go serveControl(control, s.handle)
	relayListener, err := s.listenUnix(s.plan.Paths.Relay)
	if err != nil {
		return err
	}
	s.listeners = append(s.listeners, relayListener)
	s.relay = vmchannel.New(vmchannel.Identity{Name: s.d.Name, UUID: s.d.UUID}, s.d.VMChannels())
	go s.relay.Serve(context.Background(), relayListener.UnixListener)
	if err := prepareConfinement(env, s.plan, env.Self); err != nil {
		return err
	}
	if ourEnd != nil {
		// minivirt's own network: guest connections reach the same relay
		// without a process per connection.
		conn, err := net.FileConn(ourEnd)
		if err != nil {
			return err
		}
		if s.network, err = usernet.NewMTU(s.d.VMChannels(), s.d.NetstackMTU(), s.relay.Handle); err != nil {
			conn.Close()
			return err
		}
		go func() {
			err := s.network.Serve(context.Background(), conn)
			s.logf("network: QEMU's end closed (%v)", err)
		}()
		for _, f := range s.d.Forwards() {
			if err := s.startForward(f); err != nil {
				return err
			}
		}
	}

	if err := os.MkdirAll(env.LogDir, 0o700); err != nil {
		return err
	}
	qemuLog, err := os.OpenFile(filepath.Join(env.LogDir, s.d.Name+".qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer qemuLog.Close()
	logStart, _ := qemuLog.Seek(0, io.SeekEnd)
	fmt.Fprintf(qemuLog, "minivirt: %s: starting %s\n", time.Now().UTC().Format(time.RFC3339), strings.Join(s.plan.Argv, " "))

	cmd := exec.Command(s.plan.Argv[0], s.plan.Argv[1:]...)
	cmd.Stdout, cmd.Stderr = qemuLog, qemuLog
	// QEMU gets the descriptors in files and an environment of its own,
	// nothing of whoever ran minivirt (a rig's test process included).
	if err := proc.CloseOnExec(); err != nil {
		return fmt.Errorf("closing inherited descriptors: %w", err)
	}
	cmd.Env = proc.Environ(proc.SafePath, s.plan.Env...)
	cmd.ExtraFiles = files
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
	s.qemuID, _ = proc.Lookup(cmd.Process.Pid)
	go func() {
		s.waited = cmd.Wait()
		close(s.done)
	}()
	// QEMU's identity is recorded before it runs a guest instruction (it
	// waits, -S): from here on destroy finds it even if this process dies.
	s.mu.Lock()
	s.runtime.QEMU = s.qemuID
	s.mu.Unlock()
	recCtx, cancelRec := context.WithTimeout(ctx, qmpConnectTimeout)
	defer cancelRec()
	if err := s.rec.flush(recCtx, s.snapshot()); err != nil {
		cmd.Process.Kill()
		<-s.done
		return fmt.Errorf("recording QEMU's pid: %w", err)
	}
	for _, f := range files { // QEMU has them now
		f.Close()
	}
	files = nil

	// failed ends a start that went wrong, in QEMU's own words.
	failed := func(what error) error {
		select {
		case <-s.done:
			text, _ := exitText(s.waited)
			what = fmt.Errorf("QEMU %s", text)
		case <-time.After(quitGrace):
			cmd.Process.Kill()
			<-s.done
		}
		return fmt.Errorf("%w: %s", what, qemuWords(qemuLog.Name(), logStart))
	}
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
		return failed(err)
	}
	callCtx, cancel2 := context.WithTimeout(ctx, qmpCallTimeout)
	defer cancel2()
	machine := StartedPaused()
	if !s.cfg.Paused {
		if err := qmp.Cont(callCtx, mon); err != nil {
			mon.Close()
			return failed(err)
		}
		machine = Booted()
	}
	s.mu.Lock()
	s.mon, s.m = mon, machine
	s.runtime.Since = time.Now().UTC()
	s.mu.Unlock()
	// The start is reported only once the store says the domain runs.
	recCtx, cancel3 := context.WithTimeout(ctx, qmpConnectTimeout)
	defer cancel3()
	if err := s.rec.flush(recCtx, s.snapshot()); err != nil {
		cmd.Process.Kill()
		<-s.done
		mon.Close()
		return fmt.Errorf("recording the running state: %w", err)
	}
	s.mu.Lock()
	s.ready = true
	s.mu.Unlock()
	s.logf("QEMU pid %d %s (%s)", s.qemuID.PID, machine.State, s.plan.Accel)
	go s.followMonitor(mon) // events queued in pkg/qmp until now
	return nil
}

// snapshot is the runtime record of the current state.
func (s *supervisor) snapshot() store.Runtime {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshotLocked()
}

func (s *supervisor) snapshotLocked() store.Runtime {
	r := s.runtime
	r.State, r.Reason, r.Detail = s.m.State, s.m.Reason, s.m.Detail
	return r
}

// step applies one input to the state machine, records a changed state and
// carries out the actions it asks for; it returns the error of a power-button
// press that failed. It holds no lock while it acts.
func (s *supervisor) step(in Input) error {
	s.mu.Lock()
	before := s.m
	var actions []Action
	s.m, actions = Step(s.m, in, s.policy)
	changed := before.State != s.m.State || before.Reason != s.m.Reason || before.Detail != s.m.Detail
	if changed {
		s.runtime.Since = time.Now().UTC()
	}
	rt := s.snapshotLocked()
	s.mu.Unlock()
	if changed {
		s.logf("state: %s (%s) %s", rt.State, rt.Reason, rt.Detail)
		s.rec.set(rt)
	}
	var err error
	for _, a := range actions {
		if e := s.act(a); e != nil {
			err = e
		}
	}
	return err
}

func (s *supervisor) monitor() qmp.Monitor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mon
}

func (s *supervisor) act(a Action) error {
	ctx, cancel := context.WithTimeout(context.Background(), qmpCallTimeout)
	defer cancel()
	switch a {
	case ActPowerdown:
		if err := qmp.SystemPowerdown(ctx, s.monitor()); err != nil {
			s.logf("system_powerdown: %v", err)
			s.step(Input{Kind: ReqPowerdownFailed})
			return fmt.Errorf("pressing the ACPI power button: %w", err)
		}
	case ActResetCont:
		if err := qmp.SystemReset(ctx, s.monitor()); err != nil {
			s.logf("system_reset: %v", err)
		}
		if err := qmp.Cont(ctx, s.monitor()); err != nil {
			s.logf("cont: %v", err)
		}
	case ActQuit:
		go s.quit() // its wait must not hold up the event loop
	case ActHoldOnPoweroff, ActReleaseOnPoweroff:
		action := map[Action]string{ActHoldOnPoweroff: "pause", ActReleaseOnPoweroff: "poweroff"}[a]
		cmd := []byte(`{"execute": "set-action", "arguments": {"shutdown": "` + action + `"}}`)
		if _, err := s.monitor().RunRaw(ctx, cmd); err != nil {
			s.logf("set-action shutdown=%s: %v", action, err)
		}
	}
	return nil
}

// quit ends QEMU: QMP quit first, SIGKILL when QEMU does not go within
// quitGrace or the monitor cannot be used.
func (s *supervisor) quit() {
	ctx, cancel := context.WithTimeout(context.Background(), quitGrace)
	defer cancel()
	if err := qmp.Quit(ctx, s.monitor()); err != nil && !isClosed(err) {
		s.logf("quit: %v; killing QEMU", err)
		s.qemu.Process.Kill()
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		s.qemu.Process.Kill()
	}
}

func isClosed(err error) bool {
	return errors.Is(err, qmp.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)
}

// followMonitor feeds QMP events to the state machine. When the connection
// is lost while QEMU runs, it says so and dials QEMU's monitor again (QEMU
// listens for a new client), then asks QEMU what it missed.
func (s *supervisor) followMonitor(mon qmp.Monitor) {
	for {
		for ev := range mon.Events() {
			s.logf("event %s %v", ev.Name, ev.Data)
			switch ev.Name {
			case "SHUTDOWN":
				reason, _ := ev.Data["reason"].(string)
				s.step(Input{Kind: EvShutdown, Reason: reason})
			case "STOP":
				s.step(Input{Kind: EvStop})
			case "RESUME":
				s.step(Input{Kind: EvResume})
			case "GUEST_PANICKED":
				s.step(Input{Kind: EvPanic})
			}
		}
		select {
		case <-s.done:
			return
		default:
		}
		s.mu.Lock()
		ending := s.m.Final != nil || s.m.Asked == AskDestroy
		s.mu.Unlock()
		if ending { // QEMU closes its monitor on the way out
			<-s.done
			return
		}
		why := "connection closed"
		if err := mon.Err(); err != nil {
			why = err.Error()
		}
		s.logf("QMP monitor lost: %s", why)
		s.step(Input{Kind: EvMonitorLost, Detail: why})
		if mon = s.redial(); mon == nil {
			return // QEMU is gone
		}
	}
}

// redial connects to QEMU's monitor again, until it works or QEMU is gone.
func (s *supervisor) redial() qmp.Monitor {
	for delay := 50 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), qmpCallTimeout)
		go func() {
			select {
			case <-s.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		mon, err := qmp.Dial(ctx, s.plan.Paths.QMP)
		if err == nil {
			st, err := qmp.QueryStatus(ctx, mon)
			cancel()
			if err == nil {
				s.mu.Lock()
				old := s.mon
				s.mon = mon
				s.mu.Unlock()
				old.Close()
				s.logf("QMP monitor back; QEMU says %s", st.Status)
				s.step(Input{Kind: EvMonitorBack, Reason: st.Status})
				return mon
			}
			mon.Close()
		}
		cancel()
		select {
		case <-s.done:
			return nil
		case <-time.After(delay):
		}
	}
}

// follow waits for QEMU to exit, cleans up, and records the final state;
// the record is retried until it lands.
func (s *supervisor) follow() error {
	<-s.done
	text, clean := exitText(s.waited)
	s.step(Input{Kind: EvExited, Clean: clean, Detail: text})
	s.monitor().Close()
	rt := s.snapshot()
	s.logf("QEMU %s: %s (%s)", text, rt.State, rt.Reason)
	rt.QEMU, rt.Supervisor, rt.RunDir = proc.ID{}, proc.ID{}, ""
	// The end is kept in the runtime directory until the store has it:
	// while the database cannot be written, commands read it there (the
	// control socket keeps answering), and if this process gives up, the
	// next command that writes records it rather than a crash.
	s.stopServing()
	rt.Generation = s.rec.generation()
	if err := rundir.WritePending(s.cfg.Env.RunDir, rt); err != nil {
		s.logf("keeping the final state in the runtime directory: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), finalRecordTimeout)
	defer cancel()
	err := s.rec.flush(ctx, rt)
	s.rec.stop()
	if err != nil && !errors.Is(err, store.ErrSuperseded) {
		s.logf("%v; the runtime directory keeps it for the next command", err)
		s.closeControl()
		return err
	}
	s.cleanup()
	return nil
}

// startForward listens on a forward's host side and relays each host
// connection to the guest through minivirt's network.
func (s *supervisor) startForward(f domain.Forward) error {
	var l net.Listener
	var err error
	if f.Path != "" {
		l, err = s.listenUnix(f.Path)
	} else {
		l, err = net.Listen("tcp", f.Listen.String())
	}
	if err != nil {
		return fmt.Errorf("forward %s: %w", f.Name(), err)
	}
	s.relay.AddInbound(f.Name(), f.MaxConnections)
	s.mu.Lock()
	s.forwards[f.Name()] = forward{cfg: f, l: l}
	s.mu.Unlock()
	port := f.GuestPort
	go s.relay.ServeInbound(l, f.Name(), func(ctx context.Context) (net.Conn, error) { return s.network.DialGuest(ctx, port) })
	return nil
}

// stopForward closes a forward's host side; connections under way go on.
func (s *supervisor) stopForward(name string) {
	s.mu.Lock()
	f, ok := s.forwards[name]
	delete(s.forwards, name)
	s.mu.Unlock()
	if !ok {
		return
	}
	f.l.Close() // a Unix listener removes its socket file
	s.relay.RemoveInbound(name)
}

// cleanup stops serving and removes what this supervisor made: its
// runtime directory's files and the virtio sockets it bound.
func (s *supervisor) cleanup() {
	s.stopServing()
	s.closeControl()
	if owner, ok := rundir.Owner(s.cfg.Env.RunDir); ok && owner == s.self {
		if err := rundir.Remove(s.cfg.Env.RunDir); err != nil {
			s.logf("%v", err)
		}
	}
}

// closeControl closes the control socket: the last thing a supervisor
// serves.
func (s *supervisor) closeControl() {
	if s.control != nil {
		s.control.Close()
	}
}

// stopServing closes every listener but the control socket, the network
// and the virtio sockets this supervisor bound.
func (s *supervisor) stopServing() {
	s.mu.Lock()
	var names []string
	for name := range s.forwards {
		names = append(names, name)
	}
	s.mu.Unlock()
	for _, name := range names {
		s.stopForward(name)
	}
	for _, l := range s.listeners {
		l.Close()
	}
	if s.network != nil {
		s.network.Close()
	}
	for _, sock := range s.plan.Sockets { // QMP, console, virtio ports
		s.removeSocket(sock.Path)
	}
}

// handle answers one control request.
func (s *supervisor) handle(ctx context.Context, req Request) Response {
	s.mu.Lock()
	ready := s.ready
	s.mu.Unlock()
	if !ready {
		return Response{Starting: true, Error: ErrStarting.Error()}
	}
	callCtx, cancel := context.WithTimeout(ctx, qmpCallTimeout)
	defer cancel()
	fail := func(err error) Response { return Response{Error: err.Error()} }
	switch req.Op {
	case OpStatus:
		s.mu.Lock()
		st := &Status{State: s.m.State, Reason: s.m.Reason, Detail: s.m.Detail, MonitorLost: s.m.MonitorLost,
			VirtioPorts: s.plan.VirtioPorts}
		live := s.live
		for name, f := range s.forwards {
			c, _ := s.relay.InboundCounters(name)
			st.Forwards = append(st.Forwards, ForwardStatus{Forward: f.cfg, Counters: c})
		}
		s.mu.Unlock()
		sort.Slice(st.Forwards, func(i, j int) bool { return st.Forwards[i].Forward.Name() < st.Forwards[j].Forward.Name() })
		for _, vc := range live.VMChannels() {
			c, _ := s.relay.Counters(vc.AddrPort())
			st.VMChannels = append(st.VMChannels, ChannelStatus{VMChannel: vc, Counters: c})
		}
		st.Addresses = s.addresses()
		st.RecordPending = s.rec.pending()
		return Response{Status: st}
	case OpShutdown, OpReboot:
		if err := s.monitorUp(); err != nil {
			return Response{Error: err.Error(), MonitorLost: true}
		}
		s.mu.Lock()
		state := s.m.State
		s.mu.Unlock()
		if state == store.StatePaused {
			// A press now would wait for the next resume, and power the
			// guest off then.
			return fail(fmt.Errorf("the domain is paused: its guest cannot act on the ACPI power button; resume it first"))
		}
		kind := ReqShutdown
		if req.Op == OpReboot {
			kind = ReqReboot
		}
		// The machine learns of the request before the button is pressed:
		// the guest's SHUTDOWN can come before QMP's reply.
		if err := s.step(Input{Kind: kind}); err != nil {
			return fail(err)
		}
		if kind == ReqShutdown {
			s.shutdownTimer(req.Timeout)
		}
		return Response{}
	case OpDestroy:
		s.step(Input{Kind: ReqDestroy})
		go func() { // when quit is not possible, kill at once
			select {
			case <-s.done:
			case <-time.After(quitGrace):
				s.qemu.Process.Kill()
			}
		}()
		select {
		case <-s.done:
		case <-ctx.Done():
			return fail(fmt.Errorf("QEMU did not exit: %w", ctx.Err()))
		}
		return Response{}
	case OpSuspend:
		if err := qmp.Stop(callCtx, s.monitor()); err != nil {
			return fail(err)
		}
		s.step(Input{Kind: EvStop}) // now, not when the STOP event comes
		return Response{}
	case OpResume:
		if err := qmp.Cont(callCtx, s.monitor()); err != nil {
			return fail(err)
		}
		s.step(Input{Kind: EvResume})
		return Response{}
	case OpAddVMChannel, OpRemoveVMChannel, OpAddForward, OpRemoveForward:
		vc, err := s.changeLive(req)
		if err != nil {
			return fail(err)
		}
		return Response{VMChannel: vc}
	case OpQMP:
		out, err := s.monitor().RunRaw(callCtx, req.QMP)
		if err != nil {
			return fail(err)
		}
		return Response{QMP: out}
	}
	return fail(fmt.Errorf("unknown control operation %q", req.Op))
}

// addresses are the guest's addresses: the leases minivirt's own network
// handed out, or the one QEMU's user network always gives its guest.
func (s *supervisor) addresses() []GuestAddress {
	if s.network != nil {
		var out []GuestAddress
		for _, l := range s.network.Leases() {
			out = append(out, GuestAddress{Interface: "net0", MAC: l.MAC, Address: l.Address, Source: "lease"})
		}
		return out
	}
	if s.plan.Network != domain.NetworkSlirp {
		return nil
	}
	mac := "52:54:00:12:34:56" // QEMU's default
	if nic, ok := s.d.UserNIC(); ok && nic.MAC != "" {
		mac = nic.MAC
	}
	return []GuestAddress{{Interface: "net0", MAC: mac, Address: netip.PrefixFrom(domain.GuestAddress, domain.UserNet.Bits()), Source: "user network"}}
}

// changeLive adds or removes a vmchannel or a forward while the domain
// runs, on minivirt's own network; QEMU's cannot change its rules. Changes
// run one at a time, and the live domain (what status lists) is updated
// before the change is acknowledged, so the listing is what the guest
// reaches.
func (s *supervisor) changeLive(req Request) (*domain.VMChannel, error) {
	if s.network == nil {
		if s.plan.Network == "" {
			return nil, fmt.Errorf("the domain started without a network; use --config (it takes effect at the next start)")
		}
		return nil, fmt.Errorf("the domain runs on QEMU's user network, which cannot add or remove a rule while it runs; use --config (it takes effect at the next start)")
	}
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	var vc *domain.VMChannel
	s.mu.Lock()
	next := s.live.Clone()
	s.mu.Unlock()
	switch req.Op {
	case OpAddVMChannel:
		if req.VMChannel == nil {
			return nil, errors.New("no vmchannel given")
		}
		added, err := next.AddVMChannel(*req.VMChannel)
		vc = &added
		if err != nil {
			return nil, err
		}
		s.relay.Add(added)
		if err := s.network.AddChannel(added); err != nil {
			s.relay.Remove(added.AddrPort())
			return nil, err
		}
	case OpRemoveVMChannel:
		gone, err := next.RemoveVMChannel(req.Port, req.Address)
		if err != nil {
			return nil, err
		}
		vc = &gone
		s.network.RemoveChannel(gone.AddrPort())
		s.relay.Remove(gone.AddrPort())
	case OpAddForward:
		if req.Forward == nil {
			return nil, errors.New("no forward given")
		}
		f, err := next.AddForward(*req.Forward)
		if err != nil {
			return nil, err
		}
		if err := s.startForward(f); err != nil {
			return nil, err
		}
	case OpRemoveForward:
		f, err := next.RemoveForward(req.Port, req.Host)
		if err != nil {
			return nil, err
		}
		s.stopForward(f.Name())
	}
	s.mu.Lock()
	s.live = next
	s.mu.Unlock()
	s.logf("changed live: %s", req.Op)
	return vc, nil
}

// defaultShutdownTimeout is how long a guest has to power off when the
// request gives no time.
const defaultShutdownTimeout = 60 * time.Second

// shutdownTimer ends "in shutdown" after d when the guest has not powered
// off by then; only the newest request's timer counts.
func (s *supervisor) shutdownTimer(d time.Duration) {
	if d <= 0 {
		d = defaultShutdownTimeout
	}
	s.mu.Lock()
	s.shutdownSeq++
	seq := s.shutdownSeq
	s.mu.Unlock()
	time.AfterFunc(d, func() {
		s.mu.Lock()
		current := seq == s.shutdownSeq
		s.mu.Unlock()
		if current {
			s.step(Input{Kind: EvShutdownTimedOut, Detail: fmt.Sprintf("the guest did not power off within %s of the ACPI power button", d)})
		}
	})
}

// monitorUp fails, saying why, while the QMP monitor is lost.
func (s *supervisor) monitorUp() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m.MonitorLost {
		return fmt.Errorf("the QMP monitor is lost (%s); the guest cannot be asked to power off: use `minivirt destroy`", s.m.Detail)
	}
	return nil
}
