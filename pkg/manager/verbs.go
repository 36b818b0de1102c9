package manager

import (
	"context"
	"fmt"
	"net"

	"github.com/minivirt/minivirt/pkg/rundir"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// Reboot asks a running domain's guest to restart, through the ACPI power
// button, and returns once the button is pressed: it does not wait for the
// guest. It fails for a domain that is not running, is unsupervised, or is
// paused (its guest cannot act on the button).
func (m *Manager) Reboot(ctx context.Context, name string) error {
	return m.control(ctx, name, supervisor.OpReboot)
}

// Suspend stops a running domain's CPUs; the domain is then paused (user)
// until Resume. It fails for a domain that is not running or unsupervised.
func (m *Manager) Suspend(ctx context.Context, name string) error {
	return m.control(ctx, name, supervisor.OpSuspend)
}

// Resume lets the CPUs of a paused domain run again. It fails for a domain
// that is not running or unsupervised.
func (m *Manager) Resume(ctx context.Context, name string) error {
	return m.control(ctx, name, supervisor.OpResume)
}

// DialConsole connects to the serial console of a domain whose QEMU runs,
// supervised or not. What the guest writes to its serial port comes out of
// the connection, and what is written to it goes in; the caller closes it.
// It returns a *NotRunningError when QEMU does not run.
func (m *Manager) DialConsole(name string) (net.Conn, error) {
	_, o, err := m.Observe(name)
	if err != nil {
		return nil, err
	}
	if !o.Active() || !o.QEMUAlive {
		return nil, &NotRunningError{name}
	}
	conn, err := net.Dial("unix", rundir.PathsIn(m.DomainRunDir(name)).Console)
	if err != nil {
		return nil, fmt.Errorf("console %s: %w", name, err)
	}
	return conn, nil
}
