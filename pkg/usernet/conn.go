package usernet

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Conn is a TCP connection of the stack: a gonet.TCPConn that can also
// wait for bytes without a buffer (WaitRead) and read only what is there
// (ReadNow), so that a relay holds no buffer while the connection is idle.
// Use either Read or WaitRead and ReadNow, not both at once.
type Conn struct {
	*gonet.TCPConn
	ep tcpip.Endpoint
	wq *waiter.Queue
}

func newConn(wq *waiter.Queue, ep tcpip.Endpoint) *Conn {
	return &Conn{TCPConn: gonet.NewTCPConn(wq, ep), ep: ep, wq: wq}
}

// WaitRead waits until a read would not wait: bytes are there, or the end
// of stream, or an error, or the connection is closed. It reads nothing.
// It ends early with ctx's error; read deadlines do not bound it.
func (c *Conn) WaitRead(ctx context.Context) error {
	if c.ep.Readiness(waiter.ReadableEvents) != 0 {
		return nil
	}
	entry, ready := waiter.NewChannelEntry(waiter.ReadableEvents)
	c.wq.EventRegister(&entry)
	defer c.wq.EventUnregister(&entry)
	for c.ep.Readiness(waiter.ReadableEvents) == 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ready:
		}
	}
	return nil
}

// ReadNow reads what the connection holds into p without waiting: 0 and a
// nil error when it holds nothing yet, io.EOF after the peer's end of
// stream. As Read does, it lets the receive window grow with what is read.
func (c *Conn) ReadNow(p []byte) (int, error) {
	w := tcpip.SliceWriter(p)
	res, err := c.ep.Read(&w, tcpip.ReadOptions{})
	switch err.(type) {
	case nil:
		if res.Count > 0 {
			c.ep.ModerateRecvBuf(res.Count)
		}
		return res.Count, nil
	case *tcpip.ErrWouldBlock:
		return 0, nil
	case *tcpip.ErrClosedForReceive:
		return 0, io.EOF
	}
	return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: errors.New(err.String())}
}

// listener accepts the stack's connections on one address, as
// gonet.TCPListener does, handing out Conns.
type listener struct {
	ep     tcpip.Endpoint
	wq     *waiter.Queue
	closed chan struct{}
	once   sync.Once
}

// accept waits for the next connection, until the listener is closed.
func (l *listener) accept() (*Conn, error) {
	entry, ready := waiter.NewChannelEntry(waiter.ReadableEvents)
	l.wq.EventRegister(&entry)
	defer l.wq.EventUnregister(&entry)
	for {
		ep, wq, terr := l.ep.Accept(nil)
		if terr == nil {
			return newConn(wq, ep), nil
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			return nil, &net.OpError{Op: "accept", Net: "tcp", Err: errors.New(terr.String())}
		}
		select {
		case <-l.closed:
			return nil, net.ErrClosed
		case <-ready:
		}
	}
}

// Close stops accepting: accept returns net.ErrClosed.
func (l *listener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.ep.Close()
	})
	return nil
}
