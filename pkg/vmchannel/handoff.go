package vmchannel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The handoff protocol on the relay socket: the helper sends one message,
// the channel's address and port (netip.AddrPort's binary form) with the
// guest connection's descriptor attached (SCM_RIGHTS); the supervisor
// answers one byte once the relay owns it.
const (
	ackTaken   = 'k' // the relay took the connection
	ackRefused = 'n' // no such channel: drop the connection
)

// AckTimeout is how long a helper waits for the supervisor to take a
// connection. After a timeout the helper exits without relaying: the
// supervisor may hold the connection already, and two relays would corrupt it.
const AckTimeout = 10 * time.Second

// ErrNoSupervisor means nobody took the connection: the caller may relay it.
var ErrNoSupervisor = errors.New("the supervisor cannot be reached")

// Handoff passes conn, a guest connection of the channel ch, to the
// supervisor listening on relaySocket. It returns nil once the supervisor
// owns the connection, and ErrNoSupervisor when the caller still must relay.
func Handoff(relaySocket string, ch netip.AddrPort, conn *os.File) error {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: relaySocket, Net: "unix"})
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNoSupervisor, err)
	}
	defer c.Close()
	msg, err := ch.MarshalBinary()
	if err != nil {
		return err
	}
	if _, _, err := c.WriteMsgUnix(msg, unix.UnixRights(int(conn.Fd())), nil); err != nil {
		return fmt.Errorf("%w: %v", ErrNoSupervisor, err)
	}
	c.SetReadDeadline(time.Now().Add(AckTimeout))
	var ack [1]byte
	n, err := c.Read(ack[:])
	switch {
	case n == 1 && ack[0] == ackTaken:
		return nil
	case n == 1:
		return fmt.Errorf("vmchannel %s: refused by the supervisor", ch)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("vmchannel %s: the supervisor did not answer within %s", ch, AckTimeout)
	default: // closed without an answer: the supervisor died, it holds nothing
		return fmt.Errorf("%w: %v", ErrNoSupervisor, err)
	}
}

// receive takes one handoff.
func (r *Relay) receive(c *net.UnixConn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(AckTimeout))
	buf := make([]byte, 64)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return
	}
	conn, err := connFromRights(oob[:oobn])
	if err != nil {
		c.Write([]byte{ackRefused})
		return
	}
	var ch netip.AddrPort
	if err := ch.UnmarshalBinary(buf[:n]); err != nil {
		conn.Close()
		c.Write([]byte{ackRefused})
		return
	}
	if err := r.Handle(ch, conn, netip.AddrPort{}); err != nil {
		c.Write([]byte{ackRefused})
		return
	}
	c.Write([]byte{ackTaken})
}

// connFromRights turns the one descriptor of an SCM_RIGHTS message into a
// connection; any other descriptors are closed.
func connFromRights(oob []byte) (net.Conn, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for i := range msgs {
		if got, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, got...)
		}
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("handoff carried %d descriptors, want 1", len(fds))
	}
	f := os.NewFile(uintptr(fds[0]), "guest")
	defer f.Close()
	return net.FileConn(f)
}
