package main

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/vmchannel"
)

// vmchannelHelper is what QEMU runs for every guest connection of a
// vmchannel (guestfwd cmd:), with the connection on stdin, stdout and stderr:
//
//	minivirt __vmchannel-helper RELAY_SOCKET ADDR:PORT TARGET [--proxy=v2 --name=N --uuid=U]
//
// It hands the connection to the supervisor and exits. When the supervisor
// cannot be reached it relays the connection itself. It never writes to
// stdout or stderr: they are the guest's connection.
func vmchannelHelper(args []string) int {
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
	err = vmchannel.Handoff(args[0], ch, os.Stdin)
	if err == nil {
		return 0
	}
	if !errors.Is(err, vmchannel.ErrNoSupervisor) {
		return 1
	}
	cfg := domain.VMChannel{Address: ch.Addr(), Port: ch.Port(), Path: args[2]}
	var id vmchannel.Identity
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
	if !vmchannel.Forward(conn, cfg, id, netip.AddrPort{}) {
		return 1
	}
	return 0
}
