package launcher

import (
	"bytes"
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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/qmp"
	"github.com/minivirt/minivirt/pkg/store"
	"github.com/minivirt/minivirt/pkg/usernet"
	"github.com/minivirt/minivirt/pkg/vmchannel"
	"golang.org/x/sys/unix"
)

// Config is what Supervise needs.
type Config struct {
	Domain *domain.Domain
	Env    Env
	// OpenStore opens the state database; the supervisor holds it only for
	// the moment of each update.
	OpenStore func() (*store.Store, error)
	// Ready is called once: with the start's warnings when the guest CPUs
	// run, or with the reason the start failed.
	Ready func(warnings []string, err error)
	Log   *log.Logger
	// DieWithParent kills QEMU when the process that runs Supervise dies,
	// for supervisors that run inside a test binary: QEMU must not outlive
	// a test that was killed.
	DieWithParent bool
}

// Timeouts of the supervisor's own waits.
const (
	qmpConnectTimeout = 30 * time.Second
	qmpCallTimeout    = 10 * time.Second
	quitGrace         = 5 * time.Second
)

// supervisor follows one running domain.
type supervisor struct {
	cfg    Config
	d      *domain.Domain
	plan   Plan
	mon    qmp.Monitor
	qemu   *exec.Cmd
	qemuID proc.ID
	self   proc.ID
	relay  *vmchannel.Relay
	// network is minivirt's own user network, for domain.NetworkNetstack.
	// QEMU 7.2's -netdev stream cannot reconnect: it lives and dies with
	// this process.
	network *usernet.Network
	// listeners the supervisor serves itself (control, relay): closed by
	// cleanup, since a rig runs the supervisor inside a longer-lived process.
	listeners []net.Listener
	done      chan struct{} // closed when QEMU has exited
	waited    error         // cmd.Wait's result; read only after done is closed

	mu sync.Mutex
	st store.Runtime
	// What the supervisor was asked to do, which decides how an event or
	// QEMU's exit is read.
	shutdownAsked, rebootAsked, destroyAsked bool
	final                                    *store.Runtime // the end state an action already decided
}

// Supervise starts the domain's QEMU and follows it until QEMU exits. It
// creates the runtime directory and every socket before QEMU starts, and
// removes them when QEMU is gone.
func Supervise(ctx context.Context, cfg Config) error {
	s := &supervisor{cfg: cfg, d: cfg.Domain, done: make(chan struct{})}
	err := s.start(ctx)
	if err != nil {
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
	if err := claimRunDir(env.RunDir, s.self); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.cleanup()
		}
	}()
	if s.plan, err = Build(s.d, env); err != nil {
		return err
	}
	warnings, err := CheckHost(s.d)
	if err != nil {
		return err
	}
	s.plan.Warnings = append(s.plan.Warnings, warnings...)

	// Every socket exists before QEMU starts; QEMU inherits the listeners
	// (and, on minivirt's own network, its end of the network's socket).
	var netEnd, ourEnd *os.File
	if s.plan.NetFD != 0 {
		if netEnd, ourEnd, err = socketPair(); err != nil {
			return err
		}
		defer ourEnd.Close() // the network holds its own copy
	}
	files, err := s.plan.Files(func(sock Socket) (*os.File, error) { return listenFile(sock.Path) }, netEnd)
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
	control, err := listenUnix(s.plan.Paths.Control)
	if err != nil {
		return err
	}
	s.listeners = append(s.listeners, control)
	go serveControl(control, s.handle)
	relayListener, err := listenUnix(s.plan.Paths.Relay)
	if err != nil {
		return err
	}
	s.listeners = append(s.listeners, relayListener)
	s.relay = vmchannel.New(vmchannel.Identity{Name: s.d.Name, UUID: s.d.UUID}, s.d.VMChannels())
	go s.relay.Serve(context.Background(), relayListener)
	if ourEnd != nil {
		// minivirt's own network: guest connections reach the same relay
		// without a process per connection.
		conn, err := net.FileConn(ourEnd)
		if err != nil {
			return err
		}
		if s.network, err = usernet.New(s.d.VMChannels(), s.relay.Handle); err != nil {
			conn.Close()
			return err
		}
		go func() {
			err := s.network.Serve(context.Background(), conn)
			s.logf("network: QEMU's end closed (%v)", err)
		}()
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
	for _, f := range files { // QEMU has them now
		f.Close()
	}
	files = nil

	// failed ends a start that went wrong, in QEMU's own words.
	failed := func(what error) error {
		select {
		case <-s.done:
			what = fmt.Errorf("QEMU %s", exitText(s.waited))
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
	if s.mon, err = qmp.Dial(dialCtx, s.plan.Paths.QMP); err != nil {
		return failed(err)
	}

	callCtx, cancel2 := context.WithTimeout(ctx, qmpCallTimeout)
	defer cancel2()
	if err := qmp.Cont(callCtx, s.mon); err != nil {
		return failed(err)
	}
	s.st = store.Runtime{
		State: store.StateRunning, Reason: "booted", Accel: s.plan.Accel, Network: s.plan.Network,
		RunDir: env.RunDir, QEMU: s.qemuID, Supervisor: s.self, Since: time.Now().UTC(),
	}
	if err := s.record(); err != nil {
		cmd.Process.Kill()
		<-s.done
		return err
	}
	s.logf("QEMU pid %d running (%s)", s.qemuID.PID, s.plan.Accel)
	go s.events() // from here on: events queue in pkg/qmp until now
	return nil
}

// follow waits for QEMU to exit, records the final state and cleans up.
func (s *supervisor) follow() error {
	<-s.done
	waitErr := s.waited
	s.mon.Close()
	s.mu.Lock()
	final := store.Runtime{State: store.StateShutoff, Reason: "shutdown"}
	switch {
	case s.destroyAsked:
		final.Reason = "destroyed"
	case s.final != nil:
		final = *s.final
	case waitErr != nil:
		final.Reason, final.Detail = "crashed", "QEMU "+exitText(waitErr)
	}
	final.Accel, final.Network, final.Since = s.st.Accel, s.st.Network, time.Now().UTC()
	s.st = final
	s.mu.Unlock()
	s.logf("QEMU exited (%v): %s (%s)", waitErr, final.State, final.Reason)
	s.cleanup()
	return s.record()
}

func exitText(err error) string {
	if err == nil {
		return "exited with status 0"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by signal " + ws.Signal().String()
		}
		return fmt.Sprintf("exited with status %d", ee.ExitCode())
	}
	return err.Error()
}

// record writes the current runtime record.
func (s *supervisor) record() error {
	st, err := s.cfg.OpenStore()
	if err != nil {
		s.logf("recording state: %v", err)
		return err
	}
	defer st.Close()
	s.mu.Lock()
	rt := s.st
	s.mu.Unlock()
	if err := st.SetRuntime(s.d.Name, rt); err != nil {
		s.logf("recording state: %v", err)
		return err
	}
	return nil
}

// setState changes the state and records it; the caller holds no lock.
func (s *supervisor) setState(state, reason string) {
	s.mu.Lock()
	if s.st.State == state && s.st.Reason == reason {
		s.mu.Unlock()
		return
	}
	s.st.State, s.st.Reason, s.st.Since = state, reason, time.Now().UTC()
	s.mu.Unlock()
	s.logf("state: %s (%s)", state, reason)
	s.record()
}

// cleanup stops serving, and removes the runtime directory and the sockets
// minivirt bound.
func (s *supervisor) cleanup() {
	for _, l := range s.listeners {
		l.Close()
	}
	if s.network != nil {
		s.network.Close()
	}
	for _, p := range s.d.VirtioPorts() {
		removeSocket(p.Path)
	}
	os.RemoveAll(s.cfg.Env.RunDir)
}

// events applies QMP events as libvirt does: QEMU runs with -no-shutdown
// and -action panic=pause, and the supervisor decides what follows.
func (s *supervisor) events() {
	for ev := range s.mon.Events() {
		s.logf("event %s %v", ev.Name, ev.Data)
		switch ev.Name {
		case "SHUTDOWN":
			s.onShutdown(ev)
		case "STOP":
			// Only a running guest becomes paused: a STOP that follows a
			// SHUTDOWN or GUEST_PANICKED keeps the state those gave.
			s.mu.Lock()
			running := s.st.State == store.StateRunning && !s.destroyAsked && s.final == nil
			s.mu.Unlock()
			if running {
				s.setState(store.StatePaused, "user")
			}
		case "RESUME":
			s.mu.Lock()
			paused := s.st.State != store.StateRunning
			s.mu.Unlock()
			if paused {
				s.setState(store.StateRunning, "unpaused")
			}
		case "GUEST_PANICKED":
			s.onPanic()
		}
	}
}

func (s *supervisor) onShutdown(ev qmp.Event) {
	s.mu.Lock()
	destroy, shutdown, reboot := s.destroyAsked, s.shutdownAsked, s.rebootAsked
	s.rebootAsked = false
	s.mu.Unlock()
	if destroy {
		return
	}
	reason, _ := ev.Data["reason"].(string)
	action := s.d.OnPoweroff
	switch {
	case reboot:
		action = "restart"
	case shutdown:
		action = "destroy" // the user asked for the domain to shut down
	case reason == "guest-reset": // with -no-reboot, on_reboot=destroy
		action = s.d.OnReboot
	}
	switch action {
	case "restart":
		s.restart("booted")
	case "preserve":
		s.setState(store.StatePaused, "shutdown")
	default:
		s.quit(store.Runtime{State: store.StateShutoff, Reason: "shutdown"})
	}
}

func (s *supervisor) onPanic() {
	switch s.d.OnCrash {
	case "restart":
		s.restart("crashed")
	case "preserve":
		s.setState(store.StateCrashed, "panicked")
	default:
		s.quit(store.Runtime{State: store.StateShutoff, Reason: "crashed", Detail: "guest panicked"})
	}
}

func (s *supervisor) restart(reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), qmpCallTimeout)
	defer cancel()
	if err := qmp.SystemReset(ctx, s.mon); err != nil {
		s.logf("system_reset: %v", err)
	}
	if err := qmp.Cont(ctx, s.mon); err != nil {
		s.logf("cont: %v", err)
	}
	s.setState(store.StateRunning, reason)
}

// quit ends QEMU, recording final as the end state: QMP quit first, SIGKILL
// when QEMU does not go within quitGrace.
func (s *supervisor) quit(final store.Runtime) {
	s.mu.Lock()
	if s.final == nil {
		s.final = &final
	}
	s.mu.Unlock()
	s.kill()
}

func (s *supervisor) kill() {
	ctx, cancel := context.WithTimeout(context.Background(), quitGrace)
	defer cancel()
	if err := qmp.Quit(ctx, s.mon); err != nil && !isClosed(err) {
		s.logf("quit: %v", err)
	}
	select {
	case <-s.done:
	case <-ctx.Done():
		s.qemu.Process.Kill()
	}
}

func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET)
}

// handle answers one control request.
func (s *supervisor) handle(ctx context.Context, req Request) Response {
	callCtx, cancel := context.WithTimeout(ctx, qmpCallTimeout)
	defer cancel()
	fail := func(err error) Response { return Response{Error: err.Error()} }
	switch req.Op {
	case OpStatus:
		s.mu.Lock()
		st := &Status{State: s.st.State, Reason: s.st.Reason}
		s.mu.Unlock()
		for _, vc := range s.d.VMChannels() {
			ap := netip.AddrPortFrom(vc.Address, vc.Port)
			c, _ := s.relay.Counters(ap)
			st.VMChannels = append(st.VMChannels, ChannelStatus{Channel: ap.String(), Counters: c})
		}
		return Response{Status: st}
	case OpShutdown, OpReboot:
		// Asked before the button is pressed: the guest's SHUTDOWN event
		// can come before QMP's reply.
		s.mu.Lock()
		before := s.st
		if req.Op == OpShutdown {
			s.shutdownAsked = true
			s.st.State, s.st.Reason = store.StateInShutdown, "user"
		} else {
			s.rebootAsked = true
		}
		s.mu.Unlock()
		if err := qmp.SystemPowerdown(callCtx, s.mon); err != nil {
			s.mu.Lock()
			s.shutdownAsked, s.rebootAsked = false, false
			if s.st.State == store.StateInShutdown {
				s.st.State, s.st.Reason = before.State, before.Reason
			}
			s.mu.Unlock()
			return fail(err)
		}
		if req.Op == OpShutdown {
			s.record()
		}
		return Response{}
	case OpDestroy:
		s.mu.Lock()
		s.destroyAsked = true
		s.mu.Unlock()
		s.kill()
		<-s.done
		return Response{}
	case OpSuspend:
		if err := qmp.Stop(callCtx, s.mon); err != nil {
			return fail(err)
		}
		s.setState(store.StatePaused, "user") // now, not when the STOP event comes
		return Response{}
	case OpResume:
		if err := qmp.Cont(callCtx, s.mon); err != nil {
			return fail(err)
		}
		s.setState(store.StateRunning, "unpaused")
		return Response{}
	case OpQMP:
		out, err := s.mon.RunRaw(callCtx, req.QMP)
		if err != nil {
			return fail(err)
		}
		return Response{QMP: out}
	}
	return fail(fmt.Errorf("unknown control operation %q", req.Op))
}

// qemuWords returns the last lines QEMU wrote to its log since offset.
func qemuWords(path string, offset int64) string {
	data, err := os.ReadFile(path)
	if err != nil || offset > int64(len(data)) {
		return "(no QEMU log)"
	}
	var lines []string
	for _, l := range strings.Split(string(data[offset:]), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "minivirt: ") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "QEMU wrote nothing to " + path
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// claimRunDir creates the domain's runtime directory, or takes over one left
// behind by a supervisor that is gone.
func claimRunDir(dir string, self proc.ID) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("runtime directory: %w", err)
	}
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, os.ErrExist) {
		if owner, ok := readOwner(dir); ok && proc.Alive(owner) {
			return fmt.Errorf("domain is already running (supervisor pid %d)", owner.PID)
		}
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("removing stale runtime directory: %w", err)
		}
		err = os.Mkdir(dir, 0o700)
	}
	if err != nil {
		return fmt.Errorf("runtime directory: %w", err)
	}
	return writeOwner(dir, self)
}

// CheckHost checks what the domain needs of the host at start: files that
// must exist, and vmchannel targets (absent is a warning: the service may
// start later; present but not a socket is an error).
func CheckHost(d *domain.Domain) (warnings []string, err error) {
	need := map[string]string{"os kernel": d.OS.Kernel, "os initrd": d.OS.Initrd}
	for _, disk := range d.Devices.Disks {
		need["disk "+disk.Target.Dev+" source file"] = disk.Source.File
	}
	for elem, path := range need {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("%s %s: %w", elem, path, unwrapPath(err))
		}
	}
	for _, vc := range d.VMChannels() {
		fi, err := os.Stat(vc.Path)
		switch {
		case err != nil:
			warnings = append(warnings, fmt.Sprintf("vmchannel %s:%d target %s does not exist yet; guest connections are refused until a service listens there", vc.Address, vc.Port, vc.Path))
		case fi.Mode()&os.ModeSocket == 0:
			return nil, fmt.Errorf("vmchannel %s:%d target %s is not a socket (%s); give the path of a listening Unix socket", vc.Address, vc.Port, vc.Path, fi.Mode().Type())
		}
	}
	for _, p := range d.VirtioPorts() {
		if fi, err := os.Lstat(p.Path); err == nil && fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("channel virtio %s source path %s exists and is not a socket", p.Name, p.Path)
		}
	}
	return warnings, nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// listenUnix listens on a fresh Unix socket, mode 0600.
func listenUnix(path string) (*net.UnixListener, error) {
	if err := removeSocket(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// listenFile creates a listening socket for QEMU to inherit.
func listenFile(path string) (*os.File, error) {
	l, err := listenUnix(path)
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false) // the socket file stays for QEMU
	f, err := l.File()
	l.Close()
	return f, err
}

// removeSocket removes a stale socket file; anything else at path is left
// alone and reported.
func removeSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s: another process listens there", path)
	}
	return os.Remove(path)
}

// socketPair returns two connected stream sockets: QEMU's end and ours.
// QEMU's -netdev socket refuses SOCK_SEQPACKET; frames carry their length.
func socketPair() (qemuEnd, ourEnd *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("network socket pair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "qemu-net"), os.NewFile(uintptr(fds[1]), "netstack"), nil
}

const ownerFile = "supervisor.id"

func writeOwner(dir string, id proc.ID) error {
	return os.WriteFile(filepath.Join(dir, ownerFile), []byte(fmt.Sprintf("%d %d %s\n", id.PID, id.StartTime, id.BootID)), 0o600)
}

func readOwner(dir string) (proc.ID, bool) {
	data, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return proc.ID{}, false
	}
	var id proc.ID
	_, err = fmt.Sscanf(string(bytes.TrimSpace(data)), "%d %d %s", &id.PID, &id.StartTime, &id.BootID)
	return id, err == nil
}
