package supervisor

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestFromQEMU: the vhost-user socket takes QEMU's connection, by its pid,
// and no one else's, and waits for QEMU to have started to tell.
func TestFromQEMU(t *testing.T) {
	path := filepath.Join(t.TempDir(), "net.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accept := func() net.Conn {
		t.Helper()
		d, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		c, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	for _, tt := range []struct {
		name string
		pid  int
		want bool
	}{
		{"QEMU's own connection", os.Getpid(), true},
		{"another process's", os.Getpid() + 1, false},
	} {
		s := &supervisor{qemuStarted: make(chan struct{}), qemu: &exec.Cmd{Process: &os.Process{Pid: tt.pid}}}
		close(s.qemuStarted)
		if pid, ok := s.fromQEMU(ctx, accept()); ok != tt.want || int(pid) != os.Getpid() {
			t.Errorf("%s: fromQEMU = %d, %v; want %d, %v", tt.name, pid, ok, os.Getpid(), tt.want)
		}
	}
	// Before QEMU has started, the answer waits; a start that fails ends it.
	s := &supervisor{qemuStarted: make(chan struct{})}
	early, stop := context.WithCancel(ctx)
	stop()
	if _, ok := s.fromQEMU(early, accept()); ok {
		t.Error("a connection before QEMU started was taken for QEMU's")
	}
}
