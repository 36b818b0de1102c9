package vmchannel

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/domain"
)

// RunHelper is the vmchannel helper: what QEMU's user network runs for
// every guest connection of a vmchannel (guestfwd cmd:), with the
// connection on stdin, stdout and stderr. args are the words after the
// helper's subcommand, as launcher.GuestfwdRule writes them:
//
//	RELAY_SOCKET ADDR:PORT TARGET [--proxy=v2 --name=N --uuid=U]
//
// RELAY_SOCKET is the supervisor's relay socket, ADDR:PORT the vmchannel
// and TARGET its host Unix socket; the flags are the PROXY header settings.
//
// RunHelper hands the connection to the supervisor (Handoff) and returns.
// When the supervisor cannot be reached it relays the connection itself
// (Forward), to TARGET with the PROXY settings. It never writes to stdout
// or stderr, which are the guest's connection: the first thing it does is
// put /dev/null over descriptors 1 and 2, so that not even a Go panic goes
// there. It returns the process's exit status: 0 once the connection is
// handed off or relayed, 1 when it could not be, 2 for arguments that do
// not parse.
func RunHelper(args []string) int {
	// From here on a stray write (even a Go panic) goes nowhere.
	if null, err := unix.Open("/dev/null", unix.O_WRONLY, 0); err == nil {
		unix.Dup2(null, 1)
		unix.Dup2(null, 2)
		unix.Close(null)
	}
	if len(args) < 3 {
		return 2
	}
	ch, err := netip.ParseAddrPort(args[1])
	if err != nil {
		return 2
	}
	err = Handoff(args[0], ch, os.Stdin)
	if err == nil {
		return 0
	}
	if !errors.Is(err, ErrNoSupervisor) {
		return 1
	}
	cfg := domain.VMChannel{Address: ch.Addr(), Port: ch.Port(), Path: args[2]}
	var id Identity
	for _, a := range args[3:] {
		switch k, v, _ := strings.Cut(a, "="); k {
		case "--proxy":
			cfg.Proxy = v
		case "--name":
			id.Name = v
		case "--uuid":
			id.UUID = v
		}
	}
	conn, err := net.FileConn(os.Stdin)
	if err != nil {
		return 1
	}
	os.Stdin.Close()
	if !Forward(conn, cfg, id, netip.AddrPort{}) {
		return 1
	}
	return 0
}
