package supervisor

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/unixsock"
)

// ledgerDir is the name, in the runtime root, of the ledger of the sockets
// minivirt binds (pkg/unixsock). Domain names start with a letter or digit,
// so it is no domain's runtime directory.
const ledgerDir = ".sockets"

// SocketLedger is the ledger of every socket minivirt binds under the
// runtime root root: the supervisors' and `network serve`'s alike, so that
// a socket a killed process left is known as minivirt's to whichever comes
// next, and nothing else is. It lives in the runtime root because CheckDir
// makes sure only the user can write there.
func SocketLedger(root string) unixsock.Ledger {
	return unixsock.Ledger{Dir: filepath.Join(root, ledgerDir)}
}

// sockets is the ledger of this supervisor's runtime root, the parent of
// the domain's runtime directory (claimDir has checked it).
func (s *supervisor) sockets() unixsock.Ledger {
	return SocketLedger(filepath.Dir(s.cfg.Env.RunDir))
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

// socketPair returns two connected stream sockets: QEMU's end and ours.
// QEMU's -netdev socket refuses SOCK_SEQPACKET; frames carry their length.
func socketPair() (qemuEnd, ourEnd *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("network socket pair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "qemu-net"), os.NewFile(uintptr(fds[1]), "netstack"), nil
}
