package manager

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/qga"
)

// DefaultAgentTimeout bounds an exchange with a guest agent (its sync and
// commands) when the caller gives no timeout: a guest without an agent is
// an error by then.
const DefaultAgentTimeout = 10 * time.Second

// What the guest agent reports, in its own terms (see pkg/qga).
type (
	GuestOSInfo     = qga.OSInfo
	GuestUser       = qga.User
	GuestFilesystem = qga.Filesystem
	GuestDisk       = qga.Disk
	GuestInterface  = qga.Interface
	GuestIPAddress  = qga.IPAddress
)

// ErrNoAnswer is wrapped by the error of every agent call the guest's agent
// did not answer in time: none runs in the guest, or it hangs.
var ErrNoAnswer = qga.ErrNoAnswer

// ErrNoAgentChannel is wrapped by the error of every agent call to a
// domain that runs without the guest agent's channel.
var ErrNoAgentChannel = errors.New("no guest agent channel")

// AgentChannelXML is the device that gives a domain the guest agent's
// channel; minivirt binds its socket.
const AgentChannelXML = `<channel type='unix'><source mode='bind'/><target type='virtio' name='` + domain.AgentChannel + `'/></channel>`

// noAgentChannelError says that a running domain has no agent channel.
type noAgentChannelError struct {
	name    string
	defined bool   // its definition has one now: the next start brings it
	instead string // what to do instead, or ""
}

func (e *noAgentChannelError) Error() string {
	if e.defined {
		return fmt.Sprintf("domain %s was started without a guest agent channel (%s); its definition has one now, which takes effect at its next start%s",
			e.name, domain.AgentChannel, e.instead)
	}
	return fmt.Sprintf("domain %s has no guest agent channel (%s); add one (%s) and restart it%s", e.name, domain.AgentChannel, AgentChannelXML, e.instead)
}

func (e *noAgentChannelError) Is(target error) bool { return target == ErrNoAgentChannel }

// What the verbs with an ACPI or lease way say to do without an agent.
const (
	insteadACPI  = ", or use the ACPI mode (--mode acpi)"
	insteadLease = ", or use the DHCP lease (--source lease)"
)

// withAgent runs fn with a client of a running domain's guest agent, the
// agent's sync and fn within timeout (DefaultAgentTimeout when it is 0 or
// less), and returns the domain's status as it was found. The agent's
// socket is the virtio-serial port named domain.AgentChannel that the
// domain's supervisor reports; a domain that is not running, unsupervised,
// paused or without the channel is refused, before anything is sent.
func (m *Manager) withAgent(ctx context.Context, name, instead string, timeout time.Duration, fn func(context.Context, *qga.Client) error) (Status, error) {
	if timeout <= 0 {
		timeout = DefaultAgentTimeout
	}
	st, err := m.LiveStatus(ctx, name)
	switch {
	case err != nil:
		return st, err
	case !st.Active():
		return st, &NotRunningError{name}
	case st.State == StatePaused:
		return st, fmt.Errorf("%w: %s is paused (%s), so its guest agent cannot answer; resume it first (minivirt resume %s)", ErrPaused, name, st.Reason, name)
	}
	path := ""
	for _, p := range st.Live.VirtioPorts {
		if p.Name == domain.AgentChannel {
			path = p.Path
		}
	}
	if path == "" {
		e := &noAgentChannelError{name: name, instead: instead}
		for _, p := range st.Domain.VirtioPorts() {
			e.defined = e.defined || p.Name == domain.AgentChannel
		}
		return st, e
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := qga.Dial(ctx, path)
	if err == nil {
		defer c.Close()
		err = fn(ctx, c)
	}
	var silent *qga.NoAnswerError
	if errors.As(err, &silent) {
		silent.Within = timeout // what the user gave, not what was left of it
	}
	if err != nil {
		return st, fmt.Errorf("domain %s: %w", name, err)
	}
	return st, nil
}

// AgentCommand sends a raw guest agent command, a JSON object such as
// {"execute":"guest-info"}, to a running domain's agent and returns the
// agent's whole reply ({"return": ...}), all within timeout
// (DefaultAgentTimeout when it is 0 or less). An error reply is an error
// that says the agent's class and description; a command the agent
// answers only when it fails (guest-shutdown, guest-suspend-*) returns a
// nil reply once no refusal came (see qga.RefusalWait).
func (m *Manager) AgentCommand(ctx context.Context, name string, command []byte, timeout time.Duration) ([]byte, error) {
	if err := CheckAgentCommand(command); err != nil {
		return nil, err
	}
	var reply []byte
	_, err := m.withAgent(ctx, name, "", timeout, func(ctx context.Context, c *qga.Client) error {
		var err error
		reply, err = c.Command(ctx, command)
		return err
	})
	return reply, err
}

// CheckAgentCommand checks that command is a guest agent command: a JSON
// object whose "execute" names it.
func CheckAgentCommand(command []byte) error {
	_, err := qga.CommandName(command)
	return err
}

// GuestInfoKinds picks what GuestInfo asks the agent for, as virsh
// guestinfo's --user, --os, --hostname and --filesystem do.
type GuestInfoKinds struct {
	Users, OS, Hostname, Filesystems bool
}

// GuestInfo is what a guest's agent says of it. A kind not asked for, or
// that the agent does not have, is nil (Hostname: empty); Users and
// Filesystems are empty, not nil, when asked for and there are none.
type GuestInfo struct {
	Users       []GuestUser       `json:"users"`
	OS          *GuestOSInfo      `json:"os"`
	Hostname    string            `json:"hostname,omitempty"`
	Filesystems []GuestFilesystem `json:"filesystems"`
}

// GuestInfo asks a running domain's agent for its logged-in users, its
// operating system, its host name and its filesystems, all within timeout
// (DefaultAgentTimeout when it is 0 or less). With no kind in kinds it
// asks for all of them and, as virsh guestinfo does, leaves out any the
// agent does not have (an older qemu-ga, or commands it was told to
// block); a kind asked for by name that the agent does not have is an
// error.
func (m *Manager) GuestInfo(ctx context.Context, name string, kinds GuestInfoKinds, timeout time.Duration) (GuestInfo, error) {
	all := kinds == GuestInfoKinds{}
	if all {
		kinds = GuestInfoKinds{Users: true, OS: true, Hostname: true, Filesystems: true}
	}
	var info GuestInfo
	_, err := m.withAgent(ctx, name, "", timeout, func(ctx context.Context, c *qga.Client) error {
		steps := []struct {
			want  bool
			fetch func() error
		}{
			{kinds.Users, func() (err error) { info.Users, err = c.Users(ctx); return err }},
			{kinds.OS, func() error {
				os, err := c.OSInfo(ctx)
				if err == nil {
					info.OS = &os
				}
				return err
			}},
			{kinds.Hostname, func() (err error) { info.Hostname, err = c.HostName(ctx); return err }},
			{kinds.Filesystems, func() (err error) { info.Filesystems, err = c.FSInfo(ctx); return err }},
		}
		for _, s := range steps {
			if !s.want {
				continue
			}
			if err := s.fetch(); err != nil && !(all && qga.IsUnsupported(err)) {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return GuestInfo{}, err
	}
	return info, nil
}

// AgentAddresses returns a running domain's network interfaces and their
// addresses as its guest agent reports them
// (guest-network-get-interfaces), within timeout (DefaultAgentTimeout when
// it is 0 or less).
func (m *Manager) AgentAddresses(ctx context.Context, name string, timeout time.Duration) ([]GuestInterface, error) {
	var ifaces []GuestInterface
	_, err := m.withAgent(ctx, name, insteadLease, timeout, func(ctx context.Context, c *qga.Client) error {
		var err error
		ifaces, err = c.NetworkInterfaces(ctx)
		return err
	})
	return ifaces, err
}

// AgentShutdown asks a running domain's guest agent to power the guest
// down (guest-shutdown) and, as Shutdown does, waits until the domain is
// shut off, at most timeout; the agent itself gets at most
// DefaultAgentTimeout of it. A domain without the agent's channel, or
// whose agent does not answer or refuses, is an error before any wait; a
// guest that does not go down in time wraps ErrShutdownTimeout.
func (m *Manager) AgentShutdown(ctx context.Context, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := m.withAgent(ctx, name, insteadACPI, min(timeout, DefaultAgentTimeout), func(ctx context.Context, c *qga.Client) error {
		return c.Shutdown(ctx, qga.ModePowerdown)
	})
	if err != nil {
		return err
	}
	if _, err := m.waitEnd(ctx, name, st.Generation, st.Supervisor); err != nil {
		return fmt.Errorf("domain %s did not shut off within %s of its guest agent's guest-shutdown; use `minivirt stop` or `minivirt destroy`: %w", name, timeout, ErrShutdownTimeout)
	}
	return nil
}

// AgentReboot asks a running domain's guest agent to reboot the guest
// (guest-shutdown, mode reboot) and returns once the agent took the
// request (no refusal within qga.RefusalWait): as Reboot, it does not wait
// for the guest.
func (m *Manager) AgentReboot(ctx context.Context, name string) error {
	_, err := m.withAgent(ctx, name, insteadACPI, 0, func(ctx context.Context, c *qga.Client) error {
		return c.Shutdown(ctx, qga.ModeReboot)
	})
	return err
}
