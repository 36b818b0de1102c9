// Package qmp speaks QEMU's machine protocol (QMP) on one monitor socket:
// typed commands, every call bounded by a context, and events drained at all
// times.
//
// The transport is its own rather than go-qemu's SocketMonitor, whose
// line scanner ends its reader for good on a reply over 64 KiB and which
// cannot tell a late reply from the next one. Here replies of any size are
// read by a streaming JSON decoder, and every command carries an "id" that
// QEMU echoes: a command whose caller gave up leaves no trace in the stream,
// so a time-out never closes the monitor. Only the connection ending does;
// Lost then reports why.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Event is an asynchronous QMP event.
type Event struct {
	Name      string
	Data      map[string]any
	Timestamp time.Time
}

// Monitor is what minivirt needs of a QMP connection.
type Monitor interface {
	// Run executes a command and returns the value of its "return" member.
	Run(ctx context.Context, command string, args any) (json.RawMessage, error)
	// RunRaw sends a complete QMP command and returns QEMU's whole reply.
	RunRaw(ctx context.Context, command []byte) ([]byte, error)
	// Events delivers events in order; it is closed when the monitor is lost.
	Events() <-chan Event
	// Lost is closed when the connection has ended; Err then says why.
	Lost() <-chan struct{}
	Err() error
	Close() error
}

// ErrClosed is returned by calls on a monitor whose connection has ended.
var ErrClosed = errors.New("QMP connection closed")

// Conn is a Monitor on one connection to QEMU's QMP socket.
type Conn struct {
	c      net.Conn
	events chan Event
	lost   chan struct{}

	writeMu sync.Mutex // one command on the wire at a time

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan []byte
	err     error // why the connection ended
}

// Dial connects to the QMP socket at path, reads QEMU's greeting and
// negotiates capabilities, all before ctx ends.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	var c net.Conn
	var err error
	for { // QEMU may not listen yet: retry until ctx ends
		if c, err = d.DialContext(ctx, "unix", path); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("QMP %s: %w", path, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	m, err := newConn(ctx, c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("QMP %s: %w", path, err)
	}
	return m, nil
}

// NewConn runs QMP's greeting and capability negotiation on c, which the
// returned Conn then owns.
func NewConn(ctx context.Context, c net.Conn) (*Conn, error) { return newConn(ctx, c) }

func newConn(ctx context.Context, c net.Conn) (*Conn, error) {
	m := &Conn{c: c, events: make(chan Event), lost: make(chan struct{}), pending: map[string]chan []byte{}}
	dec := json.NewDecoder(bufio.NewReader(c))
	stop := context.AfterFunc(ctx, func() { c.SetReadDeadline(time.Now()) })
	var greeting struct {
		QMP *json.RawMessage `json:"QMP"`
	}
	err := dec.Decode(&greeting)
	stop()
	c.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, fmt.Errorf("reading the greeting: %w", err)
	}
	if greeting.QMP == nil {
		return nil, errors.New("no QMP greeting: is this a QMP socket?")
	}
	queue := make(chan Event)
	go m.read(dec, queue)
	go drain(queue, m.events)
	if _, err := m.Run(ctx, "qmp_capabilities", nil); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// read takes every message off the connection: replies go to their
// waiting caller (or nowhere, when the caller gave up), events to the queue.
func (m *Conn) read(dec *json.Decoder, queue chan<- Event) {
	defer close(queue)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			m.fail(err)
			return
		}
		var head struct {
			ID        json.RawMessage `json:"id"`
			Event     string          `json:"event"`
			Data      map[string]any  `json:"data"`
			Timestamp struct {
				Seconds      int64 `json:"seconds"`
				Microseconds int64 `json:"microseconds"`
			} `json:"timestamp"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			continue // not an object: nothing to route
		}
		if head.Event != "" {
			queue <- Event{Name: head.Event, Data: head.Data,
				Timestamp: time.Unix(head.Timestamp.Seconds, head.Timestamp.Microseconds*1000)}
			continue
		}
		m.mu.Lock()
		ch, ok := m.pending[string(head.ID)]
		delete(m.pending, string(head.ID))
		m.mu.Unlock()
		if ok {
			ch <- raw // buffered: never blocks
		}
	}
}

// drain moves events into an unbounded queue, so the reader never waits for
// the consumer (a consumer that waits on a reply would otherwise deadlock).
func drain(in <-chan Event, out chan<- Event) {
	defer close(out)
	var queue []Event
	for in != nil || len(queue) > 0 {
		var send chan<- Event
		var next Event
		if len(queue) > 0 {
			send, next = out, queue[0]
		}
		select {
		case e, ok := <-in:
			if !ok {
				in = nil
				continue
			}
			queue = append(queue, e)
		case send <- next:
			queue = queue[1:]
		}
	}
}

func (m *Conn) fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		err = ErrClosed
	}
	m.err = err
	for id, ch := range m.pending {
		close(ch)
		delete(m.pending, id)
	}
	close(m.lost)
}

// Events implements Monitor.
func (m *Conn) Events() <-chan Event { return m.events }

// Lost implements Monitor.
func (m *Conn) Lost() <-chan struct{} { return m.lost }

// Err implements Monitor: nil while the connection is up.
func (m *Conn) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Close implements Monitor.
func (m *Conn) Close() error {
	err := m.c.Close()
	m.fail(ErrClosed)
	return err
}

// RunRaw implements Monitor. The command's own "id", if any, is replaced on
// the wire by the connection's and put back into the reply.
func (m *Conn) RunRaw(ctx context.Context, command []byte) ([]byte, error) {
	return m.runRaw(ctx, command, nil)
}

// FDSender is a Monitor that can hand QEMU a descriptor.
type FDSender interface {
	// SendFD hands f to QEMU under name (QMP getfd): QEMU keeps its own
	// copy, and commands name it as "fd:NAME" (migrate, migrate-incoming).
	// The caller still owns f.
	SendFD(ctx context.Context, name string, f *os.File) error
	// AddFD hands f to QEMU in a new descriptor set (QMP add-fd) and
	// returns the set's id: the block layer opens "/dev/fdset/ID" as if
	// it were a path, so a chrooted QEMU can take a new medium. The
	// caller still owns f, and removes the set (remove-fd) once QEMU has
	// opened it.
	AddFD(ctx context.Context, f *os.File) (fdset int, err error)
}

// SendFD implements FDSender: getfd, with f in the command's ancillary
// data (SCM_RIGHTS), as libvirt passes QEMU its migration descriptors.
func (m *Conn) SendFD(ctx context.Context, name string, f *os.File) error {
	_, err := m.runWithFD(ctx, "getfd", map[string]string{"fdname": name}, f)
	return err
}

// AddFD implements FDSender.
func (m *Conn) AddFD(ctx context.Context, f *os.File) (int, error) {
	out, err := m.runWithFD(ctx, "add-fd", nil, f)
	if err != nil {
		return 0, err
	}
	var info struct {
		FDSetID int `json:"fdset-id"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("QMP add-fd: reading the reply: %w", err)
	}
	return info.FDSetID, nil
}

// runWithFD runs command with f in its ancillary data and returns its
// result.
func (m *Conn) runWithFD(ctx context.Context, command string, args any, f *os.File) (json.RawMessage, error) {
	if _, ok := m.c.(*net.UnixConn); !ok {
		return nil, fmt.Errorf("QMP %s: the monitor is not on a Unix socket", command)
	}
	return m.execute(ctx, command, args, f)
}

// execute sends command with its arguments (and f, when not nil) and returns
// its result, or QEMU's error.
func (m *Conn) execute(ctx context.Context, command string, args any, f *os.File) (json.RawMessage, error) {
	c := map[string]any{"execute": command}
	if args != nil {
		c["arguments"] = args
	}
	cmd, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	out, err := m.runRaw(ctx, cmd, f)
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w", command, err)
	}
	var reply Reply
	if err := json.Unmarshal(out, &reply); err != nil {
		return nil, fmt.Errorf("QMP %s: reading the reply: %w", command, err)
	}
	if reply.Error != nil {
		return nil, fmt.Errorf("QMP %s: %s: %s", command, reply.Error.Class, reply.Error.Desc)
	}
	return reply.Return, nil
}

// runRaw is RunRaw, with f (when not nil) sent along with the command.
func (m *Conn) runRaw(ctx context.Context, command []byte, f *os.File) ([]byte, error) {
	var cmd map[string]json.RawMessage
	if err := json.Unmarshal(command, &cmd); err != nil || cmd["execute"] == nil && cmd["exec-oob"] == nil {
		return nil, fmt.Errorf("QMP: %q is not a QMP command object", command)
	}
	userID, hadID := cmd["id"]

	m.mu.Lock()
	if m.err != nil {
		err := m.err
		m.mu.Unlock()
		return nil, err
	}
	m.nextID++
	id := json.RawMessage(strconv.Quote("minivirt-" + strconv.FormatUint(m.nextID, 10)))
	reply := make(chan []byte, 1)
	m.pending[string(id)] = reply
	m.mu.Unlock()
	forget := func() {
		m.mu.Lock()
		delete(m.pending, string(id))
		m.mu.Unlock()
	}

	cmd["id"] = id
	wire, err := json.Marshal(cmd)
	if err != nil {
		forget()
		return nil, err
	}
	if err := m.write(ctx, wire, f); err != nil {
		forget()
		return nil, err
	}
	select {
	case out, ok := <-reply:
		if !ok {
			return nil, m.Err()
		}
		return restoreID(out, userID, hadID)
	case <-ctx.Done():
		// The reply, when it comes, is matched to nobody and dropped.
		forget()
		return nil, fmt.Errorf("QMP: no answer: %w", ctx.Err())
	}
}

func (m *Conn) write(ctx context.Context, wire []byte, f *os.File) error {
	m.writeMu.Lock()
	defer m.writeMu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		m.c.SetWriteDeadline(dl)
		defer m.c.SetWriteDeadline(time.Time{})
	}
	var err error
	if f != nil {
		// The descriptor rides on the command's first byte; the rest of
		// a short write follows as plain bytes.
		var n int
		n, _, err = m.c.(*net.UnixConn).WriteMsgUnix(append(wire, '\n'), unix.UnixRights(int(f.Fd())), nil)
		if err == nil && n < len(wire)+1 {
			_, err = m.c.Write(append(wire, '\n')[n:])
		}
	} else {
		_, err = m.c.Write(append(wire, '\n'))
	}
	if err != nil {
		// A partly written command leaves the stream out of step.
		m.c.Close()
		m.fail(fmt.Errorf("writing a command: %w", err))
		return m.Err()
	}
	return nil
}

func restoreID(reply []byte, userID json.RawMessage, had bool) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(reply, &obj); err != nil {
		return reply, nil
	}
	if had {
		obj["id"] = userID
	} else {
		delete(obj, "id")
	}
	return json.Marshal(obj)
}

// Reply is a reply to a command: its "return", or its "error". The guest
// agent's protocol (pkg/qga) has the same.
type Reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// Run implements Monitor.
func (m *Conn) Run(ctx context.Context, command string, args any) (json.RawMessage, error) {
	return m.execute(ctx, command, args, nil)
}

// Cont resumes the guest's CPUs.
func Cont(ctx context.Context, m Monitor) error { return run(ctx, m, "cont") }

// Stop pauses the guest's CPUs.
func Stop(ctx context.Context, m Monitor) error { return run(ctx, m, "stop") }

// SystemPowerdown presses the guest's ACPI power button.
func SystemPowerdown(ctx context.Context, m Monitor) error { return run(ctx, m, "system_powerdown") }

// SystemReset resets the machine, as the reset button would.
func SystemReset(ctx context.Context, m Monitor) error { return run(ctx, m, "system_reset") }

// Quit ends QEMU.
func Quit(ctx context.Context, m Monitor) error { return run(ctx, m, "quit") }

func run(ctx context.Context, m Monitor, cmd string) error {
	_, err := m.Run(ctx, cmd, nil)
	return err
}

// Status is the answer to query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // running, paused, shutdown, guest-panicked, ...
}

// QueryStatus asks QEMU for the run state of the guest.
func QueryStatus(ctx context.Context, m Monitor) (Status, error) {
	var st Status
	out, err := m.Run(ctx, "query-status", nil)
	if err != nil {
		return st, err
	}
	err = json.Unmarshal(out, &st)
	return st, err
}
