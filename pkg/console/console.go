// Package console shares one guest serial console among several clients.
//
// Every attached client sees what the guest writes from the moment it
// attaches. One client at a time holds the input: the first to attach while
// nobody holds it, or, once the holder has gone, the first to type. A
// client attached with force takes the input over (virsh console --force);
// the one that held it is told and goes on seeing the output. The guest is
// never slowed by a client: a client that reads too slowly loses output
// beyond its buffer and is told how much. The console log is written by
// QEMU, not here, and keeps everything.
package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// clientBuffer bounds the output waiting for one client.
const clientBuffer = 1 << 20

// inputQueue bounds the chunks of input waiting for the guest.
const inputQueue = 16

// Notices a client reads in its output stream, on lines of their own.
const (
	noticeTakenOver = "\r\n[minivirt: another console took the input over (--force); this one shows the output only]\r\n"
	noticeDropped   = "\r\n[minivirt: %d bytes of console output dropped: this console read too slowly]\r\n"
	noticeNoInput   = "\r\n[minivirt: another console holds the input; this one shows the output only (--force takes the input over)]\r\n"
)

// Mux is one guest console shared among clients. Its zero value is not
// usable; make one with New and run it with Run.
type Mux struct {
	guest io.ReadWriter
	input chan []byte

	mu      sync.Mutex
	clients map[*Client]struct{}
	holder  *Client
	closed  bool
}

// New returns a Mux for the guest's end of its console: what is read from
// guest is the guest's output, what is written to it the guest's input.
func New(guest io.ReadWriter) *Mux {
	return &Mux{guest: guest, input: make(chan []byte, inputQueue), clients: make(map[*Client]struct{})}
}

// Run copies the guest's output to every client and the holder's input to
// the guest until the guest's end fails or closes (QEMU has gone) or ctx
// ends; then it detaches every client and returns why it stopped.
func (m *Mux) Run(ctx context.Context) error {
	inCtx, stopInput := context.WithCancel(ctx)
	inDone := make(chan struct{})
	go func() {
		defer close(inDone)
		m.feedGuest(inCtx)
	}()
	err := m.readGuest(ctx)
	stopInput()
	<-inDone
	m.mu.Lock()
	m.closed = true
	for c := range m.clients {
		c.close()
	}
	m.mu.Unlock()
	return err
}

// readGuest hands the guest's output to every client.
func (m *Mux) readGuest(ctx context.Context) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := m.guest.Read(buf)
		if n > 0 {
			m.mu.Lock()
			for c := range m.clients {
				c.queue(buf[:n])
			}
			m.mu.Unlock()
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// feedGuest writes the holder's input to the guest, in order, one chunk at
// a time: a guest that does not read its input blocks only this.
func (m *Mux) feedGuest(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-m.input:
			if _, err := m.guest.Write(b); err != nil {
				return
			}
		}
	}
}

// ErrClosed is returned by Attach once the guest's console has gone.
var ErrClosed = errors.New("the guest's console has closed")

// Attach adds conn as a client and serves it in the background until
// either end closes: conn receives the guest's output, and conn's bytes go
// to the guest while it holds the input. It says whether conn holds the
// input now. With force, conn takes the input from whoever holds it.
// Attach takes conn over: it is closed when the client leaves or the
// console closes.
func (m *Mux) Attach(conn net.Conn, force bool) (holds bool, err error) {
	c, holds, err := m.Join(force)
	if err != nil {
		conn.Close()
		return false, err
	}
	c.Serve(conn)
	return holds, nil
}

// Join adds a client whose connection comes later, with Serve: the
// guest's output waits for it from now on (up to the client's buffer).
// It says whether the client holds the input, as Attach does.
func (m *Mux) Join(force bool) (c *Client, holds bool, err error) {
	c = &Client{mux: m, wake: make(chan struct{}, 1), done: make(chan struct{})}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, false, ErrClosed
	}
	m.clients[c] = struct{}{}
	if m.holder == nil || force {
		if m.holder != nil {
			m.holder.queue([]byte(noticeTakenOver))
		}
		m.holder = c
	}
	return c, m.holder == c, nil
}

// Serve serves c on conn in the background until either end closes, and
// closes conn then. A client is served once.
func (c *Client) Serve(conn net.Conn) {
	c.mu.Lock()
	c.conn = conn
	closed := c.closed
	c.mu.Unlock()
	if closed {
		conn.Close()
		return
	}
	go c.writeOut()
	go c.mux.readClient(c)
}

// readClient passes c's input to the guest while c holds it, and detaches
// c once it closes.
func (m *Mux) readClient(c *Client) {
	defer m.detach(c)
	buf := make([]byte, 4096)
	toldNoInput := false
	for {
		n, err := c.conn.Read(buf)
		switch {
		case n == 0:
		case m.takeInput(c):
			b := append([]byte(nil), buf[:n]...)
			select {
			case m.input <- b:
			case <-c.done:
				return
			}
		case !toldNoInput:
			c.queue([]byte(noticeNoInput))
			toldNoInput = true
		}
		if err != nil {
			return
		}
	}
}

// takeInput says whether c's input goes to the guest: it does when c holds
// the input, or nobody does and c takes it now.
func (m *Mux) takeInput(c *Client) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holder == nil && !m.closed {
		m.holder = c
	}
	return m.holder == c
}

// detach removes c; the input is free if c held it.
func (m *Mux) detach(c *Client) {
	m.mu.Lock()
	delete(m.clients, c)
	if m.holder == c {
		m.holder = nil
	}
	c.close()
	m.mu.Unlock()
}

// Clients returns how many clients are attached.
func (m *Mux) Clients() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.clients)
}

// Client is one console client and the output waiting for it.
type Client struct {
	mux  *Mux
	wake chan struct{} // a token when pending has bytes
	done chan struct{} // closed when the client is detached

	mu      sync.Mutex
	conn    net.Conn // nil until Serve
	pending []byte
	dropped int
	closed  bool
}

// queue adds output for c, dropping what does not fit in its buffer.
func (c *Client) queue(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if room := clientBuffer - len(c.pending); len(b) > room {
		c.dropped += len(b) - room
		b = b[:room]
	}
	c.pending = append(c.pending, b...)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// take returns the output waiting for c, followed by a notice of what was
// dropped since the last take.
func (c *Client) take() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.pending
	c.pending = nil
	if c.dropped > 0 {
		out = append(out, fmt.Sprintf(noticeDropped, c.dropped)...)
		c.dropped = 0
	}
	return out
}

// close ends c's connection.
func (c *Client) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		close(c.done)
		if c.conn != nil {
			c.conn.Close()
		}
	}
}

// writeOut writes c's output to its connection until c is detached. A
// failed write closes the connection, which detaches c through readClient.
func (c *Client) writeOut() {
	for {
		select {
		case <-c.done:
			return
		case <-c.wake:
		}
		if out := c.take(); len(out) > 0 {
			if _, err := c.conn.Write(out); err != nil {
				c.conn.Close()
				return
			}
		}
	}
}
