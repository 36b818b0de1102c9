package supervisor

import "github.com/minivirt/minivirt/pkg/store"

// Machine is what the supervisor knows of its domain: libvirt's state and
// reason, what the user asked for and has not yet happened, and whether an
// end was already decided. Step is the only thing that changes it.
type Machine struct {
	State  string // store.StateRunning, ...
	Reason string // libvirt's reason words: booted, unpaused, user, shutdown, destroyed, crashed, panicked
	Detail string

	Asked Ask
	// Final, once set, is the state to record when QEMU exits: an action
	// (quit) is on its way and later events do not change it.
	Final *store.Runtime
	// MonitorLost is set while the QMP connection is down.
	MonitorLost bool

	// before is the state to go back to when a power-button press failed.
	before [2]string
}

// Ask is a request of the user's that is under way.
type Ask int

// Requests under way.
const (
	AskNone Ask = iota
	AskShutdown
	AskReboot
	AskDestroy
)

// Kind is what happened: a QMP event, a request, QEMU's exit.
type Kind int

// Inputs of the state machine.
const (
	EvShutdown         Kind = iota // QMP SHUTDOWN; Input.Reason is QEMU's reason
	EvStop                         // QMP STOP, or a suspend that succeeded
	EvResume                       // QMP RESUME, or a resume that succeeded
	EvPanic                        // QMP GUEST_PANICKED
	EvExited                       // QEMU's process ended; Input.Clean, Input.Detail
	EvMonitorLost                  // the QMP connection ended; Input.Detail says why
	EvMonitorBack                  // QMP reconnected; Input.Reason is query-status's status
	ReqShutdown                    // the user asked for an ACPI shutdown
	ReqReboot                      // the user asked for a reboot
	ReqDestroy                     // the user asked for a hard stop
	ReqPowerdownFailed             // the power-button press of ReqShutdown/ReqReboot failed
	EvShutdownTimedOut             // the guest did not power off in the time ReqShutdown gave; Input.Detail says so
	EvSaved                        // the guest's state is saved to a file: QEMU is done with
	EvWatchdog                     // QMP WATCHDOG: the guest's watchdog fired; Input.Reason is QEMU's action
)

// Input is one thing that happened.
type Input struct {
	Kind   Kind
	Reason string
	Detail string
	Clean  bool // EvExited: QEMU exited with status 0
}

// Action is what the supervisor must do after a step.
type Action int

// Actions.
const (
	ActPowerdown Action = iota + 1 // press the ACPI power button
	ActResetCont                   // system_reset, then cont: the guest boots again
	ActQuit                        // end QEMU: QMP quit, then SIGKILL after a grace period
	// QEMU that exits on the guest's power-off (Policy.ExitsOnPoweroff)
	// is held for a reboot the user asked for, and let go after it.
	ActHoldOnPoweroff    // QMP set-action shutdown=pause
	ActReleaseOnPoweroff // QMP set-action shutdown=poweroff
)

// Policy is the domain's on_poweroff, on_reboot and on_crash, and how QEMU
// was started for them.
type Policy struct {
	OnPoweroff, OnReboot, OnCrash string
	// ExitsOnPoweroff: QEMU runs without -no-shutdown and exits by itself
	// when the guest powers off (on_poweroff destroy), so that a guest
	// that powers off while its supervisor is gone leaves no QEMU.
	ExitsOnPoweroff bool
}

// Booted is the machine of a domain whose CPUs have just started.
func Booted() Machine { return Machine{State: store.StateRunning, Reason: "booted"} }

// Restored is the machine of a domain whose saved state QEMU has taken
// back and whose CPUs run again: running (restored), as libvirt says.
func Restored() Machine { return Machine{State: store.StateRunning, Reason: "restored"} }

// StartedPaused is the machine of a domain started with its CPUs held, as
// libvirt records virsh start --paused: paused (user).
func StartedPaused() Machine { return Machine{State: store.StatePaused, Reason: "user"} }

// Step applies one input, the way libvirt applies QEMU's events: QEMU runs
// with -no-shutdown and -action panic=pause, so the supervisor decides what
// a power-off, a reboot or a panic leads to. It is a pure function.
func Step(m Machine, in Input, p Policy) (Machine, []Action) {
	if m.State == store.StateShutoff {
		return m, nil // QEMU has exited: nothing changes any more
	}
	switch in.Kind {
	case EvExited:
		final := store.Runtime{State: store.StateShutoff, Reason: "shutdown"}
		switch {
		case m.Asked == AskDestroy:
			final.Reason = "destroyed"
		case m.Final != nil:
			final = *m.Final
		case !in.Clean:
			final.Reason, final.Detail = "crashed", "QEMU "+in.Detail
		default:
			final.Detail = "QEMU exited with status 0 without being asked"
		}
		return Machine{State: final.State, Reason: final.Reason, Detail: final.Detail}, nil

	case EvMonitorLost:
		m.MonitorLost = true
		m.Detail = "QMP monitor lost: " + in.Detail
		return m, nil

	case EvMonitorBack:
		m.MonitorLost, m.Detail = false, ""
		// Events may have been missed: QEMU's run state says what happened.
		switch in.Reason {
		case "shutdown":
			return Step(m, Input{Kind: EvShutdown, Reason: "guest-shutdown"}, p)
		case "guest-panicked":
			return Step(m, Input{Kind: EvPanic}, p)
		case "paused":
			return Step(m, Input{Kind: EvStop}, p)
		case "watchdog":
			return Step(m, Input{Kind: EvWatchdog, Reason: "pause"}, p)
		case "running":
			return Step(m, Input{Kind: EvResume}, p)
		}
		return m, nil
	}

	if m.Final != nil || m.Asked == AskDestroy {
		return m, nil // QEMU is being ended: nothing else is decided
	}

	switch in.Kind {
	case ReqDestroy:
		m.Asked = AskDestroy
		return m, []Action{ActQuit}

	case ReqShutdown:
		m.Asked = AskShutdown
		m.before = [2]string{m.State, m.Reason}
		m.State, m.Reason = store.StateInShutdown, "user"
		return m, []Action{ActPowerdown}

	case ReqReboot:
		m.Asked = AskReboot
		if p.ExitsOnPoweroff {
			return m, []Action{ActHoldOnPoweroff, ActPowerdown}
		}
		return m, []Action{ActPowerdown}

	case EvShutdownTimedOut:
		// The guest ignored the button: it runs on, and says so.
		if m.Asked == AskShutdown && m.State == store.StateInShutdown {
			m.State, m.Reason, m.Detail = m.before[0], m.before[1], in.Detail
			m.Asked = AskNone
		}
		return m, nil

	case ReqPowerdownFailed:
		if m.Asked == AskShutdown && m.State == store.StateInShutdown {
			m.State, m.Reason = m.before[0], m.before[1]
		}
		var release []Action
		if m.Asked == AskReboot && p.ExitsOnPoweroff {
			release = []Action{ActReleaseOnPoweroff}
		}
		if m.Asked == AskShutdown || m.Asked == AskReboot {
			m.Asked = AskNone
		}
		return m, release

	case EvWatchdog:
		// QEMU carries the action out (-action watchdog=); the machine
		// says what it was. A pause is the watchdog's, as libvirt says;
		// a poweroff ends QEMU without a SHUTDOWN event.
		if m.Final != nil {
			return m, nil
		}
		m.Detail = "the guest's watchdog fired: " + in.Reason
		switch in.Reason {
		case "pause":
			if m.State == store.StateRunning || m.State == store.StateInShutdown {
				m.State, m.Reason = store.StatePaused, "watchdog"
			}
		case "poweroff":
			m.State, m.Reason = store.StateInShutdown, "watchdog"
			m.Final = &store.Runtime{State: store.StateShutoff, Reason: "watchdog", Detail: m.Detail}
		}
		return m, nil

	case EvStop:
		// Only a running guest becomes paused; a STOP that follows a
		// SHUTDOWN or a panic keeps the state those gave.
		if m.State == store.StateRunning || m.State == store.StateInShutdown {
			m.State, m.Reason = store.StatePaused, "user"
		}
		return m, nil

	case EvResume:
		if m.State == store.StatePaused || m.State == store.StateCrashed {
			m.State, m.Reason = store.StateRunning, "unpaused"
		}
		return m, nil

	case EvPanic:
		switch p.OnCrash {
		case "restart":
			m.State, m.Reason, m.Asked = store.StateRunning, "crashed", AskNone
			return m, []Action{ActResetCont}
		case "preserve":
			m.State, m.Reason = store.StateCrashed, "panicked"
			return m, nil
		}
		return ending(m, store.Runtime{State: store.StateShutoff, Reason: "crashed", Detail: "guest panicked"})

	case EvSaved:
		return ending(m, store.Runtime{State: store.StateShutoff, Reason: "saved"})

	case EvShutdown:
		action := p.OnPoweroff
		switch {
		case in.Reason == "host-qmp-quit" || in.Reason == "host-signal" || in.Reason == "host-ui":
			return m, nil // QEMU itself is ending: its exit decides
		case m.Asked == AskReboot:
			action = "restart"
		case m.Asked == AskShutdown:
			action = "destroy" // the user asked for the domain to be shut off
		case in.Reason == "guest-reset": // with -no-reboot: on_reboot is destroy
			action = p.OnReboot
		}
		rebooting := m.Asked == AskReboot
		m.Asked = AskNone
		switch action {
		case "restart":
			m.State, m.Reason = store.StateRunning, "booted"
			if rebooting && p.ExitsOnPoweroff {
				return m, []Action{ActResetCont, ActReleaseOnPoweroff}
			}
			return m, []Action{ActResetCont}
		case "preserve":
			m.State, m.Reason = store.StatePaused, "shutdown"
			return m, nil
		}
		return ending(m, store.Runtime{State: store.StateShutoff, Reason: "shutdown"})
	}
	return m, nil
}

func ending(m Machine, final store.Runtime) (Machine, []Action) {
	m.Final = &final
	m.State, m.Reason = store.StateInShutdown, final.Reason
	return m, []Action{ActQuit}
}
