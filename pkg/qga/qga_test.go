package qga

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/qga/qgatest"
)

// agent listens on a fresh socket and serves its clients one at a time,
// as QEMU does, with serve (nil: it never accepts, as QEMU's channel
// with no agent in the guest); it returns the socket's path.
func agent(t *testing.T, serve func(c net.Conn)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qga.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if serve != nil {
		go qgatest.Channel(l, serve)
	}
	return path
}

// guest serves a typical guest's agent, and handle's commands.
func guest(handle func(command string, args json.RawMessage, s qgatest.Session) bool) func(net.Conn) {
	return func(c net.Conn) {
		qgatest.Serve(c, func(command string, args json.RawMessage, s qgatest.Session) bool {
			if handle != nil && handle(command, args, s) {
				return true
			}
			if !qgatest.Guest(command, s) {
				s.Error("CommandNotFound", "The command "+command+" has not been found")
			}
			return true
		})
	}
}

func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func dial(t *testing.T, path string) *Client {
	t.Helper()
	c, err := Dial(within(t, 5*time.Second), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestTypedCommands(t *testing.T) {
	c := dial(t, agent(t, guest(nil)))
	ctx := within(t, 5*time.Second)
	os, err := c.OSInfo(ctx)
	if err != nil || os.PrettyName != qgatest.PrettyName || os.ID != "debian" || os.Machine != "x86_64" {
		t.Errorf("OSInfo = %+v, %v", os, err)
	}
	if host, err := c.HostName(ctx); err != nil || host != qgatest.HostName {
		t.Errorf("HostName = %q, %v", host, err)
	}
	if users, err := c.Users(ctx); err != nil || len(users) != 1 || users[0].Name != qgatest.UserName || users[0].LoginTime != 1700000000.25 {
		t.Errorf("Users = %+v, %v", users, err)
	}
	fs, err := c.FSInfo(ctx)
	if err != nil || len(fs) != 1 || fs[0].Mountpoint != "/" || fs[0].UsedBytes == nil || *fs[0].UsedBytes != 981962752 ||
		len(fs[0].Disks) != 1 || fs[0].Disks[0].Dev != "/dev/vda1" || fs[0].Disks[0].PCI.Bus != 1 {
		t.Errorf("FSInfo = %+v, %v", fs, err)
	}
	ifaces, err := c.NetworkInterfaces(ctx)
	if err != nil || len(ifaces) != 2 || ifaces[1].MAC != qgatest.MAC || ifaces[1].Addresses[0] != (IPAddress{"ipv4", qgatest.Address, 24}) {
		t.Errorf("NetworkInterfaces = %+v, %v", ifaces, err)
	}
	raw, err := c.Command(ctx, []byte(`{"execute":"guest-get-host-name"}`))
	if err != nil || string(raw) != `{"return": {"host-name": "`+qgatest.HostName+`"}}` {
		t.Errorf("Command = %s, %v", raw, err)
	}
}

// Whatever an earlier client left in the channel, both ways, is not taken
// for an answer: replies it never read (one of them after a sentinel of
// its own sync), half a reply, and half a command it wrote.
func TestStaleBytesBeforeTheSync(t *testing.T) {
	path := agent(t, func(c net.Conn) {
		c.Write([]byte(`{"return": {}}` + "\n" + "\xff" + `{"return": 77}` + "\n" + `{"return": {"host-na`))
		guest(nil)(c)
	})
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte(`{"execute": "guest-shut`)) // the earlier client's half command
	c, err := NewClient(within(t, 5*time.Second), conn)
	if err != nil {
		t.Fatal(err)
	}
	if host, err := c.HostName(within(t, 5*time.Second)); err != nil || host != qgatest.HostName {
		t.Errorf("after stale bytes: HostName = %q, %v", host, err)
	}
}

// A guest with no agent: the channel takes the connection and what is
// written, and nothing answers. That is a clear error when the deadline
// passes, not a hang; an agent that answers the sync but not a command
// says which, and the client stays failed.
func TestNoAnswer(t *testing.T) {
	began := time.Now()
	_, err := Dial(within(t, 300*time.Millisecond), agent(t, nil))
	took := time.Since(began)
	var na *NoAnswerError
	// Within is what was left of the context's time when the call began.
	if !errors.As(err, &na) || !errors.Is(err, ErrNoAnswer) || na.Command != "guest-sync-delimited" || na.Within > 300*time.Millisecond || na.Within <= 0 ||
		err.Error() != "the guest agent did not answer within "+na.Within.String()+": is qemu-guest-agent running in the guest?" {
		t.Fatalf("Dial to a silent channel: %v", err)
	}
	if took > 30*time.Second { // a hang guard, not a speed claim
		t.Errorf("the silent channel took %v to report", took)
	}

	c := dial(t, agent(t, guest(func(command string, _ json.RawMessage, _ qgatest.Session) bool {
		return command == "guest-hang" // never answered
	})))
	_, err = c.Command(within(t, 200*time.Millisecond), []byte(`{"execute":"guest-hang"}`))
	if !errors.As(err, &na) || na.Command != "guest-hang" || err.Error() != "the guest agent did not answer guest-hang within "+na.Within.String() {
		t.Fatalf("an unanswered command: %v", err)
	}
	if _, err2 := c.HostName(within(t, time.Second)); err2 != err {
		t.Errorf("after a time-out: %v; want the time-out again", err2)
	}
}

func TestCancelIsNotNoAnswer(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := Dial(ctx, agent(t, nil))
	if !errors.Is(err, context.Canceled) || errors.Is(err, ErrNoAnswer) {
		t.Fatalf("a cancelled Dial: %v", err)
	}
}

func TestErrorReply(t *testing.T) {
	c := dial(t, agent(t, guest(func(command string, _ json.RawMessage, s qgatest.Session) bool {
		if command == "guest-fsfreeze-freeze" {
			s.Error("GenericError", "failed to freeze /: Operation not supported")
			return true
		}
		return false
	})))
	ctx := within(t, 5*time.Second)
	_, err := c.Command(ctx, []byte(`{"execute":"guest-frob"}`))
	var e *Error
	if !errors.As(err, &e) || e.Class != "CommandNotFound" || e.Command != "guest-frob" || !IsUnsupported(err) ||
		err.Error() != "the guest agent could not run guest-frob: The command guest-frob has not been found (CommandNotFound)" {
		t.Errorf("an unknown command: %v", err)
	}
	_, err = c.Command(ctx, []byte(`{"execute":"guest-fsfreeze-freeze"}`))
	if !errors.As(err, &e) || e.Class != "GenericError" || IsUnsupported(err) {
		t.Errorf("a failed command: %v", err)
	}
	// An error reply leaves the stream in step.
	if host, err := c.HostName(ctx); err != nil || host != qgatest.HostName {
		t.Errorf("after error replies: %q, %v", host, err)
	}
	for _, bad := range []string{``, `[]`, `{"arguments":{}}`, `{"execute":""}`, `guest-info`} {
		if _, err := c.Command(ctx, []byte(bad)); err == nil || !strings.Contains(err.Error(), "not a guest agent command") {
			t.Errorf("Command(%q): %v", bad, err)
		}
	}
}

// guest-shutdown has no reply on success: Shutdown returns once no refusal
// came in time, or the channel closed; a refusal is an error.
func TestShutdown(t *testing.T) {
	modes := make(chan string, 3)
	path := agent(t, guest(func(command string, args json.RawMessage, s qgatest.Session) bool {
		if command != "guest-shutdown" {
			return false
		}
		var a struct{ Mode string }
		json.Unmarshal(args, &a)
		modes <- a.Mode
		switch a.Mode {
		case ModeHalt:
			s.Error("GenericError", "child process has failed to shutdown")
		case ModePowerdown:
			s.Close() // the guest goes down, QEMU with it: the channel closes
		}
		return true
	}))
	c := dial(t, path)
	if err := c.Shutdown(within(t, 5*time.Second), ModeHalt); err == nil || !strings.Contains(err.Error(), "failed to shutdown") {
		t.Errorf("a refused Shutdown: %v", err)
	}
	if host, err := c.HostName(within(t, 5*time.Second)); err != nil || host != qgatest.HostName {
		t.Errorf("after a refusal: %q, %v", host, err)
	}

	c.Close() // the channel serves one client at a time

	began := time.Now()
	c = dial(t, path)
	if err := c.Shutdown(within(t, 300*time.Millisecond), ModeReboot); err != nil {
		t.Fatalf("Shutdown(reboot): %v", err)
	}
	if took := time.Since(began); took > RefusalWait+30*time.Second { // a hang guard
		t.Errorf("Shutdown took %v", took)
	}
	c.Close()

	began = time.Now()
	if err := dial(t, path).Shutdown(within(t, 5*time.Second), ModePowerdown); err != nil || time.Since(began) > 30*time.Second { // a hang guard
		t.Errorf("Shutdown with the channel closing: %v after %v", err, time.Since(began))
	}
	for _, want := range []string{ModeHalt, ModeReboot, ModePowerdown} {
		if m := <-modes; m != want {
			t.Errorf("the agent got mode %q; want %q", m, want)
		}
	}
	if err := c.Shutdown(within(t, time.Second), "sleep"); err == nil {
		t.Error("Shutdown(sleep) succeeded")
	}
}
