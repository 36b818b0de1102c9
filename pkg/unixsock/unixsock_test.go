package unixsock

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// tempDir returns a short directory: a socket path has at most 107 bytes,
// and t.TempDir's names grow with the test's.
func tempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "unixsock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// setup returns a ledger and a directory for sockets beside it.
func setup(t *testing.T) (Ledger, string) {
	dir := tempDir(t)
	return Ledger{Dir: filepath.Join(dir, ".sockets")}, dir
}

// foreignSocket binds a socket at path the way another program would, and
// leaves it stale (its file stays, nobody listens) unless live.
func foreignSocket(t *testing.T, path string, live bool) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if live {
		t.Cleanup(func() { l.Close() })
		return
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

// kill leaves ln's socket as a process killed with -9 would: stale, with its
// record in the ledger.
func kill(ln *Listener) {
	ln.UnixListener.SetUnlinkOnClose(false)
	ln.UnixListener.Close()
}

// state is what a test checks stays in place: the file's type, identity
// (with its birth time: a file made anew may get the same inode number at
// once) and content (a symbolic link's target).
type state struct {
	mode     os.FileMode
	dev, ino uint64
	born     unix.StatxTimestamp
	content  string
}

func stateOf(t *testing.T, path string) state {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("%s is gone: %v", path, err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	s := state{mode: fi.Mode(), dev: st.Dev, ino: st.Ino}
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BTIME, &stx); err == nil && stx.Mask&unix.STATX_BTIME != 0 {
		s.born = stx.Btime
	}
	switch {
	case fi.Mode().IsRegular():
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		s.content = string(data)
	case fi.Mode()&os.ModeSymlink != 0:
		s.content, _ = os.Readlink(path)
	}
	return s
}

func TestRefusesWhatIsNotItsOwn(t *testing.T) {
	cases := []struct {
		name string
		make func(t *testing.T, path string)
		want error
	}{
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("the user's data\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, ErrNotOurs},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}, ErrNotOurs},
		{"symlink to a socket", func(t *testing.T, path string) {
			target := path + ".target"
			foreignSocket(t, target, true)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}, ErrNotOurs},
		{"live foreign socket", func(t *testing.T, path string) { foreignSocket(t, path, true) }, ErrInUse},
		{"stale foreign socket", func(t *testing.T, path string) { foreignSocket(t, path, false) }, ErrNotOurs},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ledger, dir := setup(t)
			path := filepath.Join(dir, "x.sock")
			c.make(t, path)
			before := stateOf(t, path)
			ln, err := ledger.Listen(path, 0)
			if err == nil {
				ln.Close()
				t.Fatalf("Listen on a %s succeeded", c.name)
			}
			if !errors.Is(err, c.want) {
				t.Errorf("Listen: %v, want an error wrapping %q", err, c.want)
			}
			t.Logf("refused: %v", err)
			if after := stateOf(t, path); after != before {
				t.Errorf("%s changed: %+v, was %+v", path, after, before)
			}
			// Remove leaves it too.
			if err := ledger.Remove(path); err == nil {
				t.Errorf("Remove of a %s: no error", c.name)
			}
			if after := stateOf(t, path); after != before {
				t.Errorf("%s changed by Remove: %+v, was %+v", path, after, before)
			}
		})
	}
}

// A socket an earlier minivirt process left (killed before its Close) is
// its own: the next Listen replaces it.
func TestReplacesItsOwnStaleSocket(t *testing.T) {
	ledger, dir := setup(t)
	path := filepath.Join(dir, "x.sock")
	ln, err := ledger.Listen(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	kill(ln)
	ln2, err := ledger.Listen(path, 0)
	if err != nil {
		t.Fatalf("Listen over its own stale socket: %v", err)
	}
	defer ln2.Close()
	// The inode number may well be the same (the filesystem reuses it at
	// once); that the socket answers shows it is a new one.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the new socket does not answer: %v", err)
	}
	c.Close()
}

// Another process's socket at the same path is live, even when the ledger
// has a record there: Listen refuses it and leaves it.
func TestRefusesItsOwnLiveSocket(t *testing.T) {
	ledger, dir := setup(t)
	path := filepath.Join(dir, "x.sock")
	ln, err := ledger.Listen(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln2, err := ledger.Listen(path, 0); !errors.Is(err, ErrInUse) {
		if err == nil {
			ln2.Close()
		}
		t.Fatalf("second Listen: %v, want %v", err, ErrInUse)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the first socket is gone: %v", err)
	}
	c.Close()
}

func TestCloseRemovesItsSocketAndRecord(t *testing.T) {
	ledger, dir := setup(t)
	path := filepath.Join(dir, "x.sock")
	ln, err := ledger.Listen(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket stays after Close: %v", err)
	}
	if entries, err := os.ReadDir(ledger.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the ledger stays after its last Close, with %d entries (%v)", len(entries), err)
	}
}

// A file someone put at the path after minivirt bound it is theirs: Close
// leaves it.
func TestCloseRemovesOnlyItsOwnInode(t *testing.T) {
	for _, replacement := range []string{"regular file", "socket"} {
		t.Run(replacement, func(t *testing.T) {
			ledger, dir := setup(t)
			path := filepath.Join(dir, "x.sock")
			ln, err := ledger.Listen(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if replacement == "socket" {
				foreignSocket(t, path, false)
			} else if err := os.WriteFile(path, []byte("someone else's\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			before := stateOf(t, path)
			ln.Close()
			if after := stateOf(t, path); after != before {
				t.Errorf("%s changed: %+v, was %+v", path, after, before)
			}
		})
	}
}

func TestMode(t *testing.T) {
	ledger, dir := setup(t)
	for _, c := range []struct {
		mode, want os.FileMode
	}{{0, 0o600}, {0o600, 0o600}, {0o660, 0o660}} {
		path := filepath.Join(dir, "x.sock")
		ln, err := ledger.ListenAs(path, c.mode, os.Getuid(), os.Getgid())
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != c.want {
			t.Errorf("mode %04o: the socket has %v, want %v", c.mode, fi.Mode(), os.ModeSocket|c.want)
		}
		if fi, err := os.Lstat(ledger.Dir); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("the ledger directory: %v, %v; want mode 0700", fi, err)
		}
		ln.Close()
	}
}

// A socket handed to another process stays when our descriptor is closed;
// Remove removes it, and only it.
func TestListenFileAndRemove(t *testing.T) {
	ledger, dir := setup(t)
	path := filepath.Join(dir, "x.sock")
	f, err := ledger.ListenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.FileListener(f) // as QEMU would: listen on the inherited descriptor
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the inherited socket does not answer: %v", err)
	}
	c.Close()
	if err := ledger.Remove(path); !errors.Is(err, ErrInUse) {
		t.Errorf("Remove while the socket is listened on: %v, want %v", err, ErrInUse)
	}
	l.Close() // the "QEMU" is done; its socket file stays
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the socket is gone once its listener closed: %v", err)
	}
	if err := ledger.Remove(path); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the socket stays after Remove: %v", err)
	}
	if err := ledger.Remove(path); err != nil {
		t.Errorf("Remove of nothing: %v", err)
	}
	// Another program's stale socket at the path now is not ours to remove.
	foreignSocket(t, path, false)
	before := stateOf(t, path)
	if err := ledger.Remove(path); !errors.Is(err, ErrNotOurs) {
		t.Errorf("Remove of another program's stale socket: %v, want %v", err, ErrNotOurs)
	}
	if after := stateOf(t, path); after != before {
		t.Errorf("%s changed: %+v, was %+v", path, after, before)
	}
}

// Two processes that start on the same path where a stale socket of
// minivirt's lies: one wins, and its socket stays; nobody removes it.
func TestConcurrentListenOverAStaleSocket(t *testing.T) {
	ledger, dir := setup(t)
	path := filepath.Join(dir, "x.sock")
	for round := 0; round < 100; round++ {
		ln, err := ledger.Listen(path, 0)
		if err != nil {
			t.Fatal(err)
		}
		kill(ln)
		var wg sync.WaitGroup
		results := make([]*Listener, 4)
		for i := range results {
			wg.Go(func() { results[i], _ = ledger.Listen(path, 0) })
		}
		wg.Wait()
		var won []*Listener
		for _, l := range results {
			if l != nil {
				won = append(won, l)
			}
		}
		if len(won) != 1 {
			t.Fatalf("round %d: %d of %d Listens succeeded, want 1", round, len(won), len(results))
		}
		// The path holds the winner's socket.
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("round %d: the winner's socket is gone: %v", round, err)
		}
		c.Close()
		won[0].Close()
	}
}

func TestLedgerOthersCanWriteIsRefused(t *testing.T) {
	dir := tempDir(t)
	ledger := Ledger{Dir: filepath.Join(dir, ".sockets")}
	if err := os.Mkdir(ledger.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ledger.Dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if ln, err := ledger.Listen(filepath.Join(dir, "x.sock"), 0); err == nil {
		ln.Close()
		t.Fatal("Listen with a ledger others can write: no error")
	}
}

// The records name their socket's path, so a record read is the path's own.
func TestRecordNamesItsPath(t *testing.T) {
	ledger, dir := setup(t)
	path := filepath.Join(dir, "x.sock")
	ln, err := ledger.Listen(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	data, err := os.ReadFile(ledger.file(path))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte(path)) {
		t.Errorf("record %s does not name %s", data, path)
	}
}

// The ledger directory goes with its last record and comes back with the
// next; processes that lock it meanwhile never write into a removed one.
func TestLedgerComesAndGoes(t *testing.T) {
	ledger, dir := setup(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			path := filepath.Join(dir, "s"+string(rune('a'+i))+".sock")
			for range 100 {
				ln, err := ledger.Listen(path, 0)
				if err != nil {
					t.Error(err)
					return
				}
				if err := ln.Close(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if _, err := os.Lstat(ledger.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the ledger stays when empty: %v", err)
	}
}
