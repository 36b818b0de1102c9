package manager

import (
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/store"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// Domain states, in libvirt's words: the values of Observed.State (and so
// of Entry.State and Status.State).
const (
	StateRunning    = store.StateRunning
	StatePaused     = store.StatePaused
	StateInShutdown = store.StateInShutdown
	StateShutoff    = store.StateShutoff
	StateCrashed    = store.StateCrashed
)

// ErrNotFound is the error, tested with errors.Is, of every method given a
// name or uuid that no domain has.
var ErrNotFound = store.ErrNotFound

// LiveView is what a running domain's supervisor reports of it: the state
// it last saw, and what runs now, live changes included. Status.Live holds
// one when the supervisor answered.
type LiveView = supervisor.Status

// ChannelStatus is one vmchannel as it runs: its definition and counters.
type ChannelStatus = supervisor.ChannelStatus

// ForwardStatus is one inbound forward as it runs: its definition and
// counters (BytesIn: guest to host).
type ForwardStatus = supervisor.ForwardStatus

// ConnectStatus counts the connections ConnectGuest opened to one guest
// port while the domain runs (BytesIn: guest to host).
type ConnectStatus = supervisor.ConnectStatus

// GuestAddress is one address of the guest, as domifaddr shows it.
type GuestAddress = supervisor.GuestAddress

// qemuUser returns the effective uid QEMU process pid runs as and the
// directory it is confined to: -1 when the uid cannot be read, "" when it
// is not confined (or its root cannot be read).
func qemuUser(pid int) (uid int, confined string) {
	uid = -1
	if _, euid, err := proc.UIDs(pid); err == nil {
		uid = euid
	}
	if root, err := proc.Root(pid); err == nil && root != "/" {
		confined = root
	}
	return uid, confined
}
