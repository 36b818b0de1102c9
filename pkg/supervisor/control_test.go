package supervisor

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// Before the supervisor is ready it has no monitor and no relay: every
// request gets "starting", never a crash (once, a status in that window
// dereferenced the relay that did not exist yet).
func TestControlBeforeReady(t *testing.T) {
	s := &supervisor{} // as start() leaves it while QEMU is still coming up
	path := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go serveControl(l, s.handle)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, op := range []string{OpStatus, OpShutdown, OpReboot, OpDestroy, OpSuspend, OpResume, OpQMP} {
		_, err := Call(ctx, path, Request{Op: op, QMP: []byte(`{"execute":"query-status"}`)})
		if !errors.Is(err, ErrStarting) {
			t.Errorf("%s before ready: err = %v, want ErrStarting", op, err)
		}
	}
}
