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

// DialConsole attaches to the serial console of a running domain through
// its supervisor, which shares it among every client attached: each sees
// what the guest writes from now on (the console log keeps all of it).
// One client holds the input, and input says whether this one does: the
// first to attach while nobody holds it, or the first to type once its
// holder has gone. With force, this client takes the input over; the one
// that held it is told in its output. The caller closes the connection;
// it ends when QEMU does. It fails for a domain that is not running
// (*NotRunningError). A domain whose supervisor is gone is reached on QEMU's
// own console socket, which serves one client at a time (it holds the
// input).
func (m *Manager) DialConsole(ctx context.Context, name string, force bool) (conn net.Conn, input bool, err error) {
	_, o, err := m.Observe(name)
	if err != nil {
		return nil, false, err
	}
	if !o.Active() || !o.QEMUAlive {
		return nil, false, &NotRunningError{name}
	}
	if !o.Supervised {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", rundir.PathsIn(m.DomainRunDir(name)).QEMUConsole)
		if err != nil {
			return nil, false, fmt.Errorf("console %s (unsupervised): %w", name, err)
		}
		return c, true, nil
	}
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	c, input, err := supervisor.Console(ctx, rundir.PathsIn(m.DomainRunDir(name)).Control, force)
	if err != nil {
		return nil, false, fmt.Errorf("console %s: %w", name, err)
	}
	return c, input, nil
}

// ErrGuestRefused is wrapped by ConnectGuest's error when the guest refused
// the connection: nothing listens on its port (yet).
var ErrGuestRefused = supervisor.ErrRefused

// ConnectGuest opens a connection to the TCP port of a running domain's
// guest through its supervisor, on minivirt's own network; no TCP port is
// opened on the host. The connection is the guest connection's byte
// stream, and the caller closes it:
//
//   - what is read from it is what the guest sends; io.EOF once the guest
//     has closed or half-closed its side;
//   - what is written to it reaches the guest;
//   - it implements CloseWrite() error, which half-closes towards the
//     guest: the guest reads end of stream and can still answer;
//   - Close ends both ways; it has no deadline of its own.
//
// ctx bounds the opening only. It fails for a domain that is not running
// (*NotRunningError) or unsupervised (*UnsupervisedError), or still
// starting; for one on QEMU's user network or on none, saying what to do;
// and when the guest refuses (ErrGuestRefused, within a second or two) or
// does not answer (about three seconds: its network is not up).
func (m *Manager) ConnectGuest(ctx context.Context, name string, port uint16) (net.Conn, error) {
	if _, _, err := m.running(name); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, controlTimeout)
	defer cancel()
	conn, err := supervisor.Connect(ctx, rundir.PathsIn(m.DomainRunDir(name)).Control, port)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", name, err)
	}
	return conn, nil
}
