package console

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// rig is a Mux on a fake guest: the test plays the guest at guest.
type rig struct {
	mux   *Mux
	guest net.Conn
	done  chan error
}

func newRig(t *testing.T) *rig {
	t.Helper()
	ours, guest := socketPair(t)
	r := &rig{mux: New(ours), guest: guest, done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { r.done <- r.mux.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		guest.Close()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after its guest closed")
		}
	})
	return r
}

func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", t.TempDir()+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	a, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// attach attaches a client and returns the test's end of it.
func (r *rig) attach(t *testing.T, force, wantHolds bool) net.Conn {
	t.Helper()
	ours, theirs := socketPair(t)
	holds, err := r.mux.Attach(ours, force)
	if err != nil {
		t.Fatal(err)
	}
	if holds != wantHolds {
		t.Fatalf("Attach(force=%v) holds the input = %v, want %v", force, holds, wantHolds)
	}
	return theirs
}

// expect reads from c until what it read contains want.
func expect(t *testing.T, c net.Conn, want string) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	var got bytes.Buffer
	buf := make([]byte, 64<<10)
	for !strings.Contains(got.String(), want) {
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("waiting for %q: read %q: %v", want, got.String(), err)
		}
	}
	return got.String()
}

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

func TestEveryClientSeesTheOutput(t *testing.T) {
	r := newRig(t)
	a := r.attach(t, false, true)
	b := r.attach(t, false, false)
	write(t, r.guest, "login: ")
	expect(t, a, "login: ")
	expect(t, b, "login: ")
}

func TestOnlyTheHolderTypes(t *testing.T) {
	r := newRig(t)
	a := r.attach(t, false, true)
	b := r.attach(t, false, false)
	write(t, b, "from-b\n")
	expect(t, b, "another console holds the input")
	write(t, a, "from-a\n")
	// The guest reads its input in order: b's line would come first.
	got := expect(t, r.guest, "from-a\n")
	if got != "from-a\n" {
		t.Errorf("the guest read %q, want only the holder's %q", got, "from-a\n")
	}
}

func TestForceTakesTheInputOver(t *testing.T) {
	r := newRig(t)
	a := r.attach(t, false, true)
	c := r.attach(t, true, true)
	expect(t, a, "took the input over")
	write(t, a, "from-a\n")
	write(t, c, "from-c\n")
	if got := expect(t, r.guest, "from-c\n"); got != "from-c\n" {
		t.Errorf("the guest read %q, want only the new holder's %q", got, "from-c\n")
	}
	write(t, r.guest, "output")
	expect(t, a, "output") // the old holder still sees the output
	expect(t, c, "output")
}

func TestTheInputIsFreeOnceItsHolderLeaves(t *testing.T) {
	r := newRig(t)
	a := r.attach(t, false, true)
	b := r.attach(t, false, false)
	a.Close()
	deadline := time.Now().Add(10 * time.Second)
	for r.mux.Clients() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the closed client is still attached")
		}
		time.Sleep(time.Millisecond)
	}
	write(t, b, "from-b\n")
	expect(t, r.guest, "from-b\n")
	r.attach(t, false, false) // b took the input by typing
}

func TestASlowClientNeverHoldsTheGuest(t *testing.T) {
	r := newRig(t)
	slow := r.attach(t, false, true)
	fast := r.attach(t, false, false)
	total := 3 * clientBuffer
	wrote := make(chan error, 1)
	go func() {
		_, err := r.guest.Write(bytes.Repeat([]byte("x"), total))
		wrote <- err
	}()
	fast.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.CopyN(io.Discard, fast, int64(total)); err != nil {
		t.Fatalf("the fast client: %v", err)
	}
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the guest's output was held up by a client that does not read")
	}
	write(t, r.guest, "end")
	expect(t, slow, "bytes of console output dropped")
}

func TestClientsEndWithTheGuest(t *testing.T) {
	r := newRig(t)
	a := r.attach(t, false, true)
	r.guest.Close()
	a.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, a); err != nil {
		t.Fatalf("the client's connection did not end with the guest's console: %v", err)
	}
	select {
	case err := <-r.done:
		r.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	ours, _ := socketPair(t)
	if _, err := r.mux.Attach(ours, false); err != ErrClosed {
		t.Errorf("Attach after the end: %v, want ErrClosed", err)
	}
}
