// Package qmp is a thin layer over github.com/digitalocean/go-qemu/qmp: typed
// commands, every call bounded by a context, and events drained at all times.
//
// go-qemu's event channel is unbuffered and its reader stops (and with it
// every command) while nobody takes events, so Dial starts a goroutine that
// moves events into an unbounded queue at once. go-qemu's Run has no deadline;
// Run here returns when the context ends and closes the monitor, since a
// command whose answer never came leaves the stream out of step.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
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
	// Events delivers events in order; it is closed when the monitor closes.
	Events() <-chan Event
	Close() error
}

// Socket is a Monitor on QEMU's QMP Unix socket.
type Socket struct {
	mon    *goqmp.SocketMonitor
	events chan Event
	once   sync.Once
}

// Dial connects to the QMP socket at path and negotiates capabilities.
func Dial(ctx context.Context, path string) (*Socket, error) {
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	type result struct {
		mon *goqmp.SocketMonitor
		err error
	}
	done := make(chan result, 1)
	go func() {
		mon, err := goqmp.NewSocketMonitor("unix", path, timeout)
		if err == nil {
			if err = mon.Connect(); err != nil {
				mon.Disconnect()
			}
		}
		done <- result{mon, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		go func() { // close the monitor whenever the handshake ends
			if r := <-done; r.err == nil {
				r.mon.Disconnect()
			}
		}()
		return nil, fmt.Errorf("QMP %s: %w", path, ctx.Err())
	}
	if r.err != nil {
		return nil, fmt.Errorf("QMP %s: %w", path, r.err)
	}
	in, err := r.mon.Events(context.Background())
	if err != nil {
		r.mon.Disconnect()
		return nil, err
	}
	s := &Socket{mon: r.mon, events: make(chan Event)}
	go s.drain(in)
	return s, nil
}

// drain moves events from go-qemu into an unbounded queue so that go-qemu's
// reader never waits for the consumer.
func (s *Socket) drain(in <-chan goqmp.Event) {
	defer close(s.events)
	var queue []Event
	for in != nil || len(queue) > 0 {
		var out chan Event
		var next Event
		if len(queue) > 0 {
			out, next = s.events, queue[0]
		}
		select {
		case e, ok := <-in:
			if !ok {
				in = nil
				continue
			}
			ts := time.Unix(e.Timestamp.Seconds, e.Timestamp.Microseconds*1000)
			queue = append(queue, Event{Name: e.Event, Data: e.Data, Timestamp: ts})
		case out <- next:
			queue = queue[1:]
		}
	}
}

// Events implements Monitor.
func (s *Socket) Events() <-chan Event { return s.events }

// Close implements Monitor.
func (s *Socket) Close() error {
	var err error
	s.once.Do(func() { err = s.mon.Disconnect() })
	return err
}

// ErrClosed is returned by calls on a monitor that had to be closed.
var ErrClosed = errors.New("QMP connection closed")

// RunRaw implements Monitor.
func (s *Socket) RunRaw(ctx context.Context, command []byte) ([]byte, error) {
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := s.mon.Run(command)
		done <- result{out, err}
	}()
	select {
	case r := <-done:
		return r.out, r.err
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("QMP: no answer: %w", ctx.Err())
	}
}

// Run implements Monitor.
func (s *Socket) Run(ctx context.Context, command string, args any) (json.RawMessage, error) {
	cmd := map[string]any{"execute": command}
	if args != nil {
		cmd["arguments"] = args
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	out, err := s.RunRaw(ctx, b)
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w", command, err)
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(out, &reply); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", command, err)
	}
	return reply.Return, nil
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
