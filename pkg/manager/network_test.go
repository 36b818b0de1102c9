package manager

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/domain"
)

// serveNetwork defines a domain with a Unix-socket forward at forward and
// runs ServeNetwork for it on socket until it returns or a second has
// passed (it then serves, and is stopped).
func serveNetwork(t *testing.T, dir, forward, socket string) error {
	t.Helper()
	m := &Manager{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), LockTimeout: 10 * time.Second}
	xml := `<domain type='qemu'><name>fw</name><memory>65536</memory><os><kernel>/k</kernel></os>
<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1' network='netstack'>
<forward port='80' path='` + forward + `'/></vmchannels></metadata></domain>`
	d, err := domain.Parse(strings.NewReader(xml))
	if err == nil {
		err = d.Validate()
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Define(d); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.ServeNetwork(ctx, "fw", socket, "", log.New(io.Discard, "", 0)) }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Second):
		cancel()
		return <-done
	}
}

// `network serve` removed a regular file at a forward's path, where `start`
// refused it; it must refuse too, and leave the file as it was.
func TestServeNetworkKeepsAFileAtAForwardPath(t *testing.T) {
	dir, err := os.MkdirTemp("", "mvnet-") // socket paths must stay short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	forward := filepath.Join(dir, "web.sock")
	const content = "the user's data\n"
	if err := os.WriteFile(forward, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	err = serveNetwork(t, dir, forward, filepath.Join(dir, "net", "fw.sock"))
	if err == nil {
		t.Error("ServeNetwork served with a regular file at a forward's path")
	} else {
		t.Logf("refused: %v", err)
	}
	if data, err := os.ReadFile(forward); err != nil || string(data) != content {
		t.Errorf("the file at the forward's path: %q, %v; want %q", data, err, content)
	}
}

// A stale socket at the network socket's path that minivirt did not make
// (another program's) stays; only minivirt's own is replaced.
func TestServeNetworkKeepsAForeignStaleSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "mvnet-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "fw.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	before := born(t, socket)
	err = serveNetwork(t, dir, filepath.Join(dir, "web.sock"), socket)
	if err == nil {
		t.Error("ServeNetwork served over another program's socket")
	} else {
		t.Logf("refused: %v", err)
	}
	if after := born(t, socket); after != before {
		t.Errorf("the foreign socket was replaced or removed: %+v, was %+v", after, before)
	}
}

// born tells one file at path from any other made there: its inode number
// alone may be the same for a file made anew at once.
func born(t *testing.T, path string) string {
	t.Helper()
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
		return err.Error()
	}
	return fmt.Sprintf("dev %d:%d inode %d born %d.%09d", st.Dev_major, st.Dev_minor, st.Ino, st.Btime.Sec, st.Btime.Nsec)
}
