package supervisor

import (
	"slices"
	"testing"

	"github.com/minivirt/minivirt/pkg/store"
)

func TestStep(t *testing.T) {
	defaults := Policy{OnPoweroff: "destroy", OnReboot: "restart", OnCrash: "destroy"}
	exits := defaults
	exits.ExitsOnPoweroff = true
	running := Booted()
	paused := Machine{State: store.StatePaused, Reason: "user"}
	crashedKept := Machine{State: store.StateCrashed, Reason: "panicked"}
	asked := func(m Machine, a Ask) Machine { m.Asked = a; return m }
	shuttingDown := Machine{State: store.StateInShutdown, Reason: "user", Asked: AskShutdown, before: [2]string{store.StateRunning, "booted"}}
	final := func(reason, detail string) *store.Runtime {
		return &store.Runtime{State: store.StateShutoff, Reason: reason, Detail: detail}
	}
	ending := func(reason, detail string) Machine {
		return Machine{State: store.StateInShutdown, Reason: reason, Final: final(reason, detail)}
	}
	decided := ending("shutdown", "")
	off := func(reason, detail string) Machine {
		return Machine{State: store.StateShutoff, Reason: reason, Detail: detail}
	}

	tests := []struct {
		name    string
		from    Machine
		in      Input
		policy  Policy
		want    Machine
		actions []Action
	}{
		// Requests.
		{"shutdown asked", running, Input{Kind: ReqShutdown}, defaults, shuttingDown, []Action{ActPowerdown}},
		{"reboot asked", running, Input{Kind: ReqReboot}, defaults, asked(running, AskReboot), []Action{ActPowerdown}},
		{"destroy asked", running, Input{Kind: ReqDestroy}, defaults, asked(running, AskDestroy), []Action{ActQuit}},
		{"destroy while ending", decided, Input{Kind: ReqDestroy}, defaults, decided, nil},
		{"saved", paused, Input{Kind: EvSaved}, defaults, ending("saved", ""), []Action{ActQuit}},
		{"saved, then QEMU quits", ending("saved", ""), Input{Kind: EvExited, Clean: true}, defaults, off("saved", ""), nil},
		{"power button failed: back to running", shuttingDown, Input{Kind: ReqPowerdownFailed}, defaults, Machine{State: store.StateRunning, Reason: "booted", before: shuttingDown.before}, nil},
		{"power button failed on reboot", asked(running, AskReboot), Input{Kind: ReqPowerdownFailed}, defaults, running, nil},

		// The guest's watchdog, by QEMU's action.
		{"watchdog pause", running, Input{Kind: EvWatchdog, Reason: "pause"}, defaults, Machine{State: store.StatePaused, Reason: "watchdog", Detail: "the guest's watchdog fired: pause"}, nil},
		{"STOP after a watchdog pause", Machine{State: store.StatePaused, Reason: "watchdog"}, Input{Kind: EvStop}, defaults, Machine{State: store.StatePaused, Reason: "watchdog"}, nil},
		{"watchdog poweroff", running, Input{Kind: EvWatchdog, Reason: "poweroff"}, defaults, Machine{State: store.StateInShutdown, Reason: "watchdog", Detail: "the guest's watchdog fired: poweroff", Final: final("watchdog", "the guest's watchdog fired: poweroff")}, nil},
		{"watchdog poweroff, then QEMU exits", Machine{State: store.StateInShutdown, Reason: "watchdog", Final: final("watchdog", "fired")}, Input{Kind: EvExited, Clean: true}, defaults, off("watchdog", "fired"), nil},
		{"watchdog reset: the guest goes on", running, Input{Kind: EvWatchdog, Reason: "reset"}, defaults, Machine{State: store.StateRunning, Reason: "booted", Detail: "the guest's watchdog fired: reset"}, nil},
		{"watchdog after a decided end", decided, Input{Kind: EvWatchdog, Reason: "pause"}, defaults, decided, nil},
		{"monitor back to a watchdog pause", Machine{State: store.StateRunning, Reason: "booted", MonitorLost: true}, Input{Kind: EvMonitorBack, Reason: "watchdog"}, defaults, Machine{State: store.StatePaused, Reason: "watchdog", Detail: "the guest's watchdog fired: pause"}, nil},

		// Pause and resume.
		{"suspend", running, Input{Kind: EvStop}, defaults, paused, nil},
		{"STOP while in shutdown", shuttingDown, Input{Kind: EvStop}, defaults, Machine{State: store.StatePaused, Reason: "user", Asked: AskShutdown, before: shuttingDown.before}, nil},
		{"STOP after a decided end", decided, Input{Kind: EvStop}, defaults, decided, nil},
		{"STOP of a kept panic", crashedKept, Input{Kind: EvStop}, defaults, crashedKept, nil},
		{"resume", paused, Input{Kind: EvResume}, defaults, Machine{State: store.StateRunning, Reason: "unpaused"}, nil},
		{"resume of a kept panic", crashedKept, Input{Kind: EvResume}, defaults, Machine{State: store.StateRunning, Reason: "unpaused"}, nil},
		{"RESUME while running", running, Input{Kind: EvResume}, defaults, running, nil},
		{"resume after start --paused", StartedPaused(), Input{Kind: EvResume}, defaults, Machine{State: store.StateRunning, Reason: "unpaused"}, nil},
		{"destroy after start --paused", StartedPaused(), Input{Kind: ReqDestroy}, defaults, asked(paused, AskDestroy), []Action{ActQuit}},

		// Guest power-off, by on_poweroff.
		{"power-off, destroy", running, Input{Kind: EvShutdown, Reason: "guest-shutdown"}, defaults, decided, []Action{ActQuit}},
		{"power-off, restart", running, Input{Kind: EvShutdown, Reason: "guest-shutdown"}, Policy{OnPoweroff: "restart"}, running, []Action{ActResetCont}},
		{"power-off, preserve", running, Input{Kind: EvShutdown, Reason: "guest-shutdown"}, Policy{OnPoweroff: "preserve"}, Machine{State: store.StatePaused, Reason: "shutdown"}, nil},
		{"power-off after shutdown asked, on_poweroff restart", shuttingDown, Input{Kind: EvShutdown, Reason: "guest-shutdown"}, Policy{OnPoweroff: "restart"}, Machine{State: store.StateInShutdown, Reason: "shutdown", Final: final("shutdown", ""), before: shuttingDown.before}, []Action{ActQuit}},
		{"power-off after reboot asked", asked(running, AskReboot), Input{Kind: EvShutdown, Reason: "guest-shutdown"}, defaults, running, []Action{ActResetCont}},

		// QEMU that exits on the guest's power-off is held for a reboot.
		{"reboot asked, QEMU exits on power-off", running, Input{Kind: ReqReboot}, exits, asked(running, AskReboot), []Action{ActHoldOnPoweroff, ActPowerdown}},
		{"power-off after reboot asked, held", asked(running, AskReboot), Input{Kind: EvShutdown, Reason: "guest-shutdown"}, exits, running, []Action{ActResetCont, ActReleaseOnPoweroff}},
		{"power button failed on reboot, held", asked(running, AskReboot), Input{Kind: ReqPowerdownFailed}, exits, running, []Action{ActReleaseOnPoweroff}},
		{"shutdown asked, QEMU exits on power-off", running, Input{Kind: ReqShutdown}, exits, shuttingDown, []Action{ActPowerdown}},
		{"power-off, QEMU exits by itself", shuttingDown, Input{Kind: EvShutdown, Reason: "guest-shutdown"}, exits, Machine{State: store.StateInShutdown, Reason: "shutdown", Final: final("shutdown", ""), before: shuttingDown.before}, []Action{ActQuit}},

		// A guest that ignores the power button runs on, and says so.
		{"shutdown timed out", shuttingDown, Input{Kind: EvShutdownTimedOut, Detail: "ignored"}, defaults, Machine{State: store.StateRunning, Reason: "booted", Detail: "ignored", before: shuttingDown.before}, nil},
		{"shutdown timed out after power-off decided", decided, Input{Kind: EvShutdownTimedOut, Detail: "ignored"}, defaults, decided, nil},
		{"shutdown timed out while paused", Machine{State: store.StatePaused, Reason: "user", Asked: AskShutdown, before: shuttingDown.before}, Input{Kind: EvShutdownTimedOut, Detail: "ignored"}, defaults, Machine{State: store.StatePaused, Reason: "user", Asked: AskShutdown, before: shuttingDown.before}, nil},
		{"guest reset with -no-reboot, on_reboot destroy", running, Input{Kind: EvShutdown, Reason: "guest-reset"}, Policy{OnReboot: "destroy"}, decided, []Action{ActQuit}},
		{"SHUTDOWN from quit", asked(running, AskDestroy), Input{Kind: EvShutdown, Reason: "host-qmp-quit"}, defaults, asked(running, AskDestroy), nil},
		{"SHUTDOWN from a signal", running, Input{Kind: EvShutdown, Reason: "host-signal"}, defaults, running, nil},
		{"second SHUTDOWN", decided, Input{Kind: EvShutdown, Reason: "guest-shutdown"}, defaults, decided, nil},

		// Panics, by on_crash.
		{"panic, destroy", running, Input{Kind: EvPanic}, defaults, ending("crashed", "guest panicked"), []Action{ActQuit}},
		{"panic, restart", running, Input{Kind: EvPanic}, Policy{OnCrash: "restart"}, Machine{State: store.StateRunning, Reason: "crashed"}, []Action{ActResetCont}},
		{"panic, preserve", running, Input{Kind: EvPanic}, Policy{OnCrash: "preserve"}, crashedKept, nil},
		{"panic while paused, preserve", paused, Input{Kind: EvPanic}, Policy{OnCrash: "preserve"}, crashedKept, nil},

		// QEMU's exit decides the final state.
		{"exit after power-off", decided, Input{Kind: EvExited, Clean: true}, defaults, off("shutdown", ""), nil},
		{"exit after destroy", asked(running, AskDestroy), Input{Kind: EvExited, Detail: "killed by signal killed"}, defaults, off("destroyed", ""), nil},
		{"exit after a panic", ending("crashed", "guest panicked"), Input{Kind: EvExited, Clean: true}, defaults, off("crashed", "guest panicked"), nil},
		{"QEMU dies", running, Input{Kind: EvExited, Detail: "killed by signal killed"}, defaults, off("crashed", "QEMU killed by signal killed"), nil},
		{"QEMU dies while paused", paused, Input{Kind: EvExited, Detail: "exited with status 1"}, defaults, off("crashed", "QEMU exited with status 1"), nil},
		{"QEMU quits unasked", running, Input{Kind: EvExited, Clean: true}, defaults, off("shutdown", "QEMU exited with status 0 without being asked"), nil},
		{"QEMU dies during a shutdown", shuttingDown, Input{Kind: EvExited, Detail: "killed by signal killed"}, defaults, off("crashed", "QEMU killed by signal killed"), nil},
		{"nothing after shut off", off("shutdown", ""), Input{Kind: EvResume}, defaults, off("shutdown", ""), nil},
		{"no request after shut off", off("shutdown", ""), Input{Kind: ReqShutdown}, defaults, off("shutdown", ""), nil},

		// The monitor.
		{"monitor lost", running, Input{Kind: EvMonitorLost, Detail: "EOF"}, defaults, Machine{State: store.StateRunning, Reason: "booted", Detail: "QMP monitor lost: EOF", MonitorLost: true}, nil},
		{"monitor back, still running", Machine{State: store.StateRunning, Reason: "booted", Detail: "QMP monitor lost: EOF", MonitorLost: true}, Input{Kind: EvMonitorBack, Reason: "running"}, defaults, running, nil},
		{"monitor back, the guest powered off meanwhile", Machine{State: store.StateRunning, Reason: "booted", MonitorLost: true}, Input{Kind: EvMonitorBack, Reason: "shutdown"}, defaults, decided, []Action{ActQuit}},
		{"monitor back, the guest panicked meanwhile", Machine{State: store.StateRunning, Reason: "booted", MonitorLost: true}, Input{Kind: EvMonitorBack, Reason: "guest-panicked"}, Policy{OnCrash: "preserve"}, crashedKept, nil},
		{"monitor back, paused meanwhile", Machine{State: store.StateRunning, Reason: "booted", MonitorLost: true}, Input{Kind: EvMonitorBack, Reason: "paused"}, defaults, paused, nil},
		{"exit while the monitor is lost", Machine{State: store.StateRunning, Reason: "booted", MonitorLost: true}, Input{Kind: EvExited, Detail: "killed by signal killed"}, defaults, off("crashed", "QEMU killed by signal killed"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, actions := Step(tt.from, tt.in, tt.policy)
			if !sameMachine(got, tt.want) {
				t.Errorf("state = %s, want %s", describe(got), describe(tt.want))
			}
			if !slices.Equal(actions, tt.actions) {
				t.Errorf("actions = %v, want %v", actions, tt.actions)
			}
		})
	}
}

func sameMachine(a, b Machine) bool {
	if (a.Final == nil) != (b.Final == nil) || a.Final != nil && *a.Final != *b.Final {
		return false
	}
	a.Final, b.Final = nil, nil
	return a == b
}

func describe(m Machine) string {
	s := m.State + " (" + m.Reason + ")"
	if m.Detail != "" {
		s += " detail=" + m.Detail
	}
	if m.Asked != AskNone {
		s += " asked=" + []string{"", "shutdown", "reboot", "destroy"}[m.Asked]
	}
	if m.Final != nil {
		s += " final=" + m.Final.State + " (" + m.Final.Reason + ")"
	}
	if m.MonitorLost {
		s += " monitor-lost"
	}
	return s
}

// A whole life: boot, suspend, resume, shutdown asked, the guest powers off,
// QEMU exits. The record must never say crashed.
func TestCleanPowerOffIsNeverACrash(t *testing.T) {
	p := Policy{OnPoweroff: "destroy", OnReboot: "restart", OnCrash: "destroy"}
	m := Booted()
	for _, in := range []Input{
		{Kind: EvStop}, {Kind: EvResume}, {Kind: ReqShutdown},
		{Kind: EvShutdown, Reason: "guest-shutdown"}, {Kind: EvStop},
		{Kind: EvShutdown, Reason: "host-qmp-quit"}, {Kind: EvExited, Clean: true},
	} {
		m, _ = Step(m, in, p)
	}
	if m.State != store.StateShutoff || m.Reason != "shutdown" {
		t.Fatalf("ended %s", describe(m))
	}
}
