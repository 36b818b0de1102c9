package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeQEMU speaks enough QMP for the tests: the greeting, capabilities, and
// for each command first burst events (which nobody may be reading), then
// the reply, unless the command is "hang".
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
		fmt.Fprintln(c, `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`)
		// Like QEMU, read a stream of JSON values: go-qemu ends none with a newline.
		dec := json.NewDecoder(c)
		for {
			var cmd struct{ Execute string }
			if dec.Decode(&cmd) != nil {
				return
			}
			switch cmd.Execute {
			case "qmp_capabilities":
				fmt.Fprintln(c, `{"return": {}}`)
			case "hang":
			case "query-status":
				for i := 0; i < burst; i++ {
					fmt.Fprintf(c, `{"event": "RESET", "data": {"n": %d}, "timestamp": {"seconds": 1, "microseconds": 2}}`+"\n", i)
				}
				fmt.Fprintln(c, `{"return": {"running": true, "status": "running"}}`)
			default:
				fmt.Fprintf(c, `{"error": {"class": "CommandNotFound", "desc": "The command %s has not been found"}}`+"\n", cmd.Execute)
			}
		}
	}()
	return path
}

func TestEventsDoNotStallCommands(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := Dial(ctx, fakeQEMU(t, 100))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// 100 events arrive before each reply and nobody reads them yet.
	for i := 0; i < 3; i++ {
		st, err := QueryStatus(ctx, m)
		if err != nil || !st.Running || st.Status != "running" {
			t.Fatalf("query-status %d: %+v, %v", i, st, err)
		}
	}
	for i := 0; i < 300; i++ {
		ev := <-m.Events()
		if ev.Name != "RESET" || ev.Data["n"].(float64) != float64(i%100) {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
}

func TestCallsAreBounded(t *testing.T) {
	m, err := Dial(context.Background(), fakeQEMU(t, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := m.Run(ctx, "hang", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a command QEMU never answers: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("the deadline did not bound the call: %s", time.Since(start))
	}
	if _, err := m.Run(context.Background(), "nope", nil); err == nil {
		t.Fatal("a call on a monitor closed by a timeout succeeded")
	}
}

func TestErrorsAndDialFailure(t *testing.T) {
	m, err := Dial(context.Background(), fakeQEMU(t, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Run(context.Background(), "nope", nil); err == nil {
		t.Fatal("QEMU's error reply was not an error")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := Dial(ctx, filepath.Join(t.TempDir(), "absent.sock")); err == nil {
		t.Fatal("dialling an absent socket succeeded")
	}
}
