package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/pkg/qmp"
	"github.com/minivirt/minivirt/pkg/store"
)

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
		if rt.State == store.StateInShutdown && before.State != store.StateInShutdown {
			// On record before the button is pressed: should this
			// process die, QEMU's exit on the guest's power-off then
			// reads as the shutdown it was, not a crash.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := s.rec.flush(ctx, rt); err != nil {
				s.logf("recording %s before acting: %v", rt.State, err)
			}
			cancel()
		} else {
			s.rec.set(rt)
		}
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
			case "WATCHDOG":
				action, _ := ev.Data["action"].(string)
				s.step(Input{Kind: EvWatchdog, Reason: action})
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
