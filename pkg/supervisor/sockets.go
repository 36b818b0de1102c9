package supervisor

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/rundir"
	"github.com/minivirt/minivirt/pkg/unixsock"
)

// sockets is the ledger of this supervisor's runtime root, the parent of
// the domain's runtime directory (claimDir has checked it).
func (s *supervisor) sockets() unixsock.Ledger {
	return rundir.SocketLedger(filepath.Dir(s.cfg.Env.RunDir))
}

// listenUnix listens on a fresh Unix socket, mode 0600, whose Close removes
// it.
func (s *supervisor) listenUnix(path string) (*unixsock.Listener, error) {
	return s.sockets().Listen(path, 0o600)
}

// listenFile creates a listening socket for QEMU to inherit; its file stays
// until removeSocket.
func (s *supervisor) listenFile(path string) (*os.File, error) {
	return s.sockets().ListenFile(path)
}

// removeSocket removes a socket minivirt made, once nobody listens on it
// (QEMU is gone); anything else at path is left alone and reported.
func (s *supervisor) removeSocket(path string) error {
	return s.sockets().Remove(path)
}

// socketPair returns two connected stream sockets, QEMU's end and ours,
// for what (the network, the console). QEMU's -netdev stream refuses
// SOCK_SEQPACKET; frames carry their length.
func socketPair(what string) (qemuEnd, ourEnd *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%s socket pair: %w", what, err)
	}
	return os.NewFile(uintptr(fds[0]), "qemu-"+what), os.NewFile(uintptr(fds[1]), what), nil
}
