package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/qmp/qmptest"
)

// fakeQEMU speaks enough QMP for the tests, echoing each command's id as
// QEMU does: the greeting, capabilities, and
//   - query-status: first a burst of events (which nobody may be reading), then the reply;
//   - big: a reply of 1 MiB;
//   - hang: no reply ever;
//   - powerdown: the reply, then a SHUTDOWN event;
//   - anything else: CommandNotFound.
func fakeQEMU(t *testing.T, burst int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		qmptest.Serve(c, func(cmd string, s qmptest.Session) bool {
			switch cmd {
			case "hang":
			case "big":
				s.Reply(`{"blob": "` + strings.Repeat("x", 1<<20) + `"}`)
			case "powerdown":
				s.Reply(`{}`)
				s.Event("SHUTDOWN", `{"guest": true, "reason": "guest-shutdown"}`)
			case "query-status":
				for i := 0; i < burst; i++ {
					s.Event("RESET", fmt.Sprintf(`{"n": %d}`, i))
				}
				s.Reply(`{"running": true, "status": "running"}`)
			default:
				s.Error("CommandNotFound", "The command "+cmd+" has not been found")
			}
			return true
		})
	}()
	return path
}

func dial(t *testing.T, burst int) (*Conn, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	m, err := Dial(ctx, fakeQEMU(t, burst))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m, ctx
}

func TestEventsDoNotStallCommands(t *testing.T) {
	m, ctx := dial(t, 100)
	// Nobody reads events while 100 arrive ahead of the reply.
	st, err := QueryStatus(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Running || st.Status != "running" {
		t.Errorf("status = %+v", st)
	}
	for i := 0; i < 100; i++ {
		select {
		case ev := <-m.Events():
			if ev.Name != "RESET" || ev.Data["n"] != float64(i) {
				t.Fatalf("event %d = %+v", i, ev)
			}
		case <-ctx.Done():
			t.Fatalf("event %d never came", i)
		}
	}
}

func TestLargeReply(t *testing.T) {
	m, ctx := dial(t, 0)
	out, err := m.RunRaw(ctx, []byte(`{"execute":"big"}`))
	if err != nil {
		t.Fatalf("1 MiB reply: %v", err)
	}
	if len(out) < 1<<20 {
		t.Errorf("reply is %d bytes, want over 1 MiB", len(out))
	}
	// The monitor still works, and still sees events.
	if err := run(ctx, m, "powerdown"); err != nil {
		t.Fatalf("after a large reply: %v", err)
	}
	waitEvent(t, ctx, m, "SHUTDOWN")
	if m.Err() != nil {
		t.Errorf("monitor lost after a large reply: %v", m.Err())
	}
}

func TestTimeoutKeepsTheMonitor(t *testing.T) {
	m, ctx := dial(t, 0)
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := m.Run(short, "hang", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hang: err = %v, want a deadline", err)
	}
	select {
	case <-m.Lost():
		t.Fatalf("a time-out closed the monitor: %v", m.Err())
	default:
	}
	if err := run(ctx, m, "powerdown"); err != nil {
		t.Fatalf("after a time-out: %v", err)
	}
	waitEvent(t, ctx, m, "SHUTDOWN")
}

func waitEvent(t *testing.T, ctx context.Context, m Monitor, name string) {
	t.Helper()
	for {
		select {
		case ev, ok := <-m.Events():
			if !ok {
				t.Fatalf("events closed before %s", name)
			}
			if ev.Name == name {
				return
			}
		case <-ctx.Done():
			t.Fatalf("no %s event", name)
		}
	}
}

func TestErrorsAndIDs(t *testing.T) {
	m, ctx := dial(t, 0)
	if _, err := m.Run(ctx, "nonsense", nil); err == nil || !strings.Contains(err.Error(), "CommandNotFound") {
		t.Errorf("unknown command: err = %v", err)
	}
	out, err := m.RunRaw(ctx, []byte(`{"execute":"query-status","id":"mine"}`))
	if err != nil {
		t.Fatal(err)
	}
	var reply struct{ ID string }
	json.Unmarshal(out, &reply)
	if reply.ID != "mine" {
		t.Errorf("reply id = %q, want the caller's own", reply.ID)
	}
	if _, err := m.RunRaw(ctx, []byte(`[1,2]`)); err == nil {
		t.Error("a non-command was sent")
	}
}

func TestConcurrentCallsGetTheirOwnReplies(t *testing.T) {
	m, ctx := dial(t, 3)
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := 0; i < 20; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if _, err := QueryStatus(ctx, m); err != nil {
				errs <- err
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := m.Run(ctx, "nonsense", nil); err == nil {
				errs <- errors.New("nonsense got a success reply")
			}
		}()
	}
	go func() { // events must keep flowing
		for range m.Events() {
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestLost(t *testing.T) {
	m, ctx := dial(t, 0)
	m.c.Close() // the other end goes away
	select {
	case <-m.Lost():
	case <-ctx.Done():
		t.Fatal("Lost never closed")
	}
	if m.Err() == nil {
		t.Error("Err is nil after the connection ended")
	}
	if _, err := m.Run(ctx, "query-status", nil); err == nil {
		t.Error("a call on a lost monitor succeeded")
	}
	if _, ok := <-m.Events(); ok {
		t.Error("Events still open")
	}
}

func TestDialTimesOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "silent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan struct{})
	defer close(done)
	go func() { // accepts and never greets, until the test ends
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			<-done
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, path); err == nil {
		t.Fatal("Dial succeeded without a greeting")
	}
}
