package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// listenUnix listens on a fresh Unix socket, mode 0600.
func listenUnix(path string) (*net.UnixListener, error) {
	if err := removeSocket(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// listenFile creates a listening socket for QEMU to inherit.
func listenFile(path string) (*os.File, error) {
	l, err := listenUnix(path)
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false) // the socket file stays for QEMU
	f, err := l.File()
	l.Close()
	return f, err
}

// removeSocket removes a stale socket file; anything else at path, and a
// socket somebody listens on, is left alone and reported.
func removeSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("%s: another process listens there", path)
	}
	return os.Remove(path)
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
