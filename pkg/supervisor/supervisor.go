// Package supervisor runs and follows the QEMU process of one domain.
//
// A supervisor starts its domain in named steps, each with its undo
// (start.go): it claims the runtime directory (pkg/rundir) and the store's
// record, creates every socket before QEMU starts and hands the listeners
// to QEMU (sockets.go), serves the guest's network (pkg/guestnet), starts
// QEMU (qemu.go) and connects QMP. Then it follows QMP events and
// re-connects a lost monitor (monitor.go), answers the CLI on a control
// socket (control.go), makes live changes (live.go), and records every
// change of state in the store (recorder.go). What an event or a request
// leads to is decided by Step (machine.go), a pure function; the rest only
// carries its decisions out.
package supervisor

import (
	"context"
	"errors"
	"github.com/minivirt/minivirt/pkg/console"
	"log"
	"net"
	"os/exec"
	"sync"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/guestnet"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/qmp"
	"github.com/minivirt/minivirt/pkg/rundir"
	"github.com/minivirt/minivirt/pkg/store"
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
	// Restore, when set, is a file minivirt saved (and the caller has
	// checked): QEMU starts waiting for its state (-incoming defer), takes
	// it by descriptor, and the guest goes on where it was, its CPUs
	// running if they ran when it was saved and Paused is not set. Domain
	// is then the one the file holds.
	Restore string
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
	self   proc.ID
	rec    *recorder
	// starting holds what the start's steps make and hand on; nil once the
	// start is over.
	starting *starting
	// claimed is set once the store records this start (paused, starting
	// up); a start that fails after it records why.
	claimed bool

	qemu   *exec.Cmd
	qemuID proc.ID
	// virtiofsd serve the guest's virtiofs shares; each ends with QEMU.
	virtiofsd []helperProcess
	done      chan struct{} // closed when QEMU has exited
	waited    error         // cmd.Wait's result; read only after done is closed

	// net serves the guest's network: the vmchannel relay, and on
	// minivirt's own network its stack and forwards. QEMU 7.2's -netdev
	// stream cannot reconnect: the stack lives and dies with this process.
	net *guestnet.Network
	// netstack is set when QEMU's NIC is on minivirt's own network.
	netstack bool
	// stopNet ends the stack's frame loop.
	stopNet context.CancelFunc
	// relay listens for the helper's handoffs (QEMU's user network).
	relay net.Listener
	// netSock is where QEMU connects to the vhost-user NIC, until it has;
	// qemuStarted is closed once s.qemu is set, so that the connection
	// can be checked against QEMU's pid.
	netSock     net.Listener
	qemuStarted chan struct{}
	// control answers the CLI; it stays open until the final record lands.
	control net.Listener
	// console shares the guest's primary console among its clients, who
	// connect to consoleSock or ask the control socket (OpConsole).
	console     *console.Mux
	consoleSock net.Listener

	mu      sync.Mutex
	m       Machine
	mon     qmp.Monitor // the current QMP connection; replaced when lost
	ready   bool
	runtime store.Runtime // the fields of the record that Step does not own
	// live is the domain as it runs, with the changes made live since
	// start (s.d is the definition it started from).
	live *domain.Domain
	// changeMu serialises live changes: each reads the live domain,
	// changes the network and stores the result before the next starts.
	changeMu sync.Mutex
	// shutdownSeq counts shutdown requests, so that only the newest
	// one's timer acts.
	shutdownSeq uint64
}

// Run starts the domain's QEMU and follows it until QEMU exits. It creates
// the runtime directory and every socket before QEMU starts, and removes
// what it made when QEMU is gone.
func Run(ctx context.Context, cfg Config) error {
	s := &supervisor{cfg: cfg, d: cfg.Domain, live: cfg.Domain, done: make(chan struct{}),
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
	s.stopVirtiofsd() // after the record: they end with QEMU's connection by themselves
	if err != nil && !errors.Is(err, store.ErrSuperseded) {
		s.logf("%v; the runtime directory keeps it for the next command", err)
		s.closeControl()
		return err
	}
	s.cleanup()
	return nil
}

// cleanup stops serving and removes what this supervisor made: its
// runtime directory's files and the virtio sockets it bound.
func (s *supervisor) cleanup() {
	s.stopServing()
	s.closeControl()
	s.removeRunDir()
}

// closeControl closes the control socket: the last thing a supervisor
// serves.
func (s *supervisor) closeControl() {
	if s.control != nil {
		s.control.Close()
	}
}

// stopServing stops the guest's network (forwards, the stack, the relay
// socket) and removes the sockets QEMU inherited; the control socket stays.
func (s *supervisor) stopServing() {
	if s.net != nil {
		s.net.Close()
	}
	if s.stopNet != nil {
		s.stopNet()
	}
	if s.relay != nil {
		s.relay.Close()
	}
	if s.netSock != nil {
		s.netSock.Close()
	}
	if s.consoleSock != nil {
		s.consoleSock.Close()
	}
	for _, sock := range s.plan.Sockets { // QMP, console, virtio ports
		s.removeSocket(sock.Path)
	}
}
