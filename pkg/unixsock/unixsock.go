// Package unixsock sets up every Unix socket minivirt listens on, and
// removes a socket only when it can prove that minivirt made it.
//
// A socket path may hold anything: a user's file or directory, a symbolic
// link, another program's socket (live or stale), or the stale socket of an
// earlier minivirt process that was killed before it could clean up. Only the
// last may be removed to make room, and nothing in the file itself tells it
// from another program's stale socket. So every socket minivirt binds is
// recorded in a ledger: a directory holding one small file per socket path,
// which names the socket file's device and inode (and birth time, where the
// filesystem keeps one). A socket at a path is minivirt's when the ledger's
// record of that path matches it.
//
// When minivirt listens on a path where something exists, a socket of its
// own that nobody listens on is removed; everything else is refused with an
// error that says what is there, and nothing is removed. Closing a Listener
// unlinks its socket only if the path still holds that same inode, and drops
// its record.
//
// All of this happens under an exclusive lock on the ledger directory, so two
// minivirt processes that share a ledger never both remove, or remove each
// other's, socket; two processes binding the same path are told apart by the
// kernel (the second bind fails with EADDRINUSE). The ledger must be writable
// by the user alone, since whoever writes it can claim any socket: Ledger
// makes its directory mode 0700 and refuses one that others can write, and
// the caller keeps it in a directory it trusts (minivirt's runtime root).
// The directory is removed when its last record goes.
//
// What stays out of reach: someone who can write the directory that holds a
// socket path can swap the file between minivirt's last look and its unlink.
// That someone could remove the file directly anyway.
package unixsock

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Errors the refusals wrap, for errors.Is.
var (
	// ErrNotOurs: something minivirt did not make is at the path.
	ErrNotOurs = errors.New("not a socket minivirt made")
	// ErrInUse: a process listens on the socket at the path.
	ErrInUse = errors.New("another process listens there")
)

// DefaultMode is the mode of a socket when the caller gives none: only its
// owner may connect.
const DefaultMode os.FileMode = 0o600

// dialTimeout bounds the probe of whether anything listens on a socket.
const dialTimeout = time.Second

// Ledger is a directory of records of the sockets minivirt bound.
type Ledger struct {
	// Dir holds the records. It is made, mode 0700, when missing; its parent
	// must exist and be a directory others cannot write to.
	Dir string
}

// Listener is a listening socket recorded in a Ledger. Its Close unlinks the
// socket file only while the path still holds the inode it bound, and drops
// the record; a file someone put there meanwhile stays. Close the Listener
// itself: closing only the UnixListener in it leaves the file and the record
// behind, as a killed process would.
type Listener struct {
	*net.UnixListener
	ledger Ledger
	path   string // absolute
	id     identity
	once   sync.Once
}

// Listen listens on a Unix socket at path, of mode (DefaultMode when 0),
// owned by the caller. See the package comment for what it does when
// something is at path already.
func (l Ledger) Listen(path string, mode os.FileMode) (*Listener, error) {
	return l.ListenAs(path, mode, -1, -1)
}

// ListenAs is Listen for a socket given to another user: the socket file is
// owned by uid and gid (-1 keeps either), so a process running as that user,
// such as libvirt's QEMU, can connect while nobody else can.
func (l Ledger) ListenAs(path string, mode os.FileMode, uid, gid int) (*Listener, error) {
	if mode == 0 {
		mode = DefaultMode
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	unlock, err := l.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := l.makeRoom(abs, path); err != nil {
		return nil, err
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: abs, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	// Only our Close unlinks, and only our own inode: the net package would
	// unlink whatever is at the path by then.
	ul.SetUnlinkOnClose(false)
	id, err := restrict(abs, mode, uid, gid)
	if err == nil {
		err = l.write(record{Path: abs, Dev: id.Dev, Ino: id.Ino, Btime: id.Btime})
	}
	if err != nil {
		ul.Close()
		if id != (identity{}) {
			unlinkIf(abs, id)
		}
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return &Listener{UnixListener: ul, ledger: l, path: abs, id: id}, nil
}

// ListenFile makes a listening socket at path (mode DefaultMode) for another
// process to inherit, as QEMU does, and returns its descriptor. The socket
// file and its record stay when the descriptor is closed here, since the
// other process listens on; Remove removes them once that process is gone.
func (l Ledger) ListenFile(path string) (*os.File, error) {
	ln, err := l.Listen(path, DefaultMode)
	if err != nil {
		return nil, err
	}
	f, err := ln.UnixListener.File()
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	ln.UnixListener.Close() // our descriptor only: f is the listener now
	return f, nil
}

// Remove removes the socket at path when the ledger records it and nobody
// listens on it any more: the process it was handed to is gone, and so is
// any other holder of its descriptor. The record, not the process that
// asks, says whose it is: one process may run several supervisors, and a
// socket it made may have been replaced since by another minivirt process's.
// Anything else at path is left in place and reported; nothing at path is
// no error.
func (l Ledger) Remove(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()
	id, kind, err := stat(abs)
	rec, recorded := l.read(abs)
	if recorded && (errors.Is(err, fs.ErrNotExist) || err == nil && !rec.is(id)) {
		// The recorded inode is gone from the path: the record can only
		// ever mislead (an inode number is reused) and goes too.
		l.drop(abs)
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("socket %s: %w", path, err)
	case kind != unix.S_IFSOCK || !recorded || !rec.is(id):
		return fmt.Errorf("%s is %s, %w; left in place", path, describe(kind), ErrNotOurs)
	}
	if live, err := listening(abs); err != nil || live {
		return fmt.Errorf("%s: %w; left in place", path, ErrInUse)
	}
	if err := unlinkIf(abs, id); err != nil {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	l.drop(abs)
	return nil
}

// Close stops listening, unlinks the socket if the path still holds the
// inode it bound, and drops its record.
func (ln *Listener) Close() error {
	err := ln.UnixListener.Close()
	ln.once.Do(func() {
		err = errors.Join(err, ln.ledger.release(ln.path, ln.id))
	})
	return err
}

// release unlinks the socket at abs if it is still id, and drops the record
// if it is still id's.
func (l Ledger) release(abs string, id identity) error {
	unlock, err := l.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if err := unlinkIf(abs, id); err != nil {
		return fmt.Errorf("removing %s: %w", abs, err)
	}
	if rec, ok := l.read(abs); ok && rec.is(id) {
		l.drop(abs)
	}
	return nil
}

// makeRoom clears the way for a bind at abs (shown as path in errors): it
// removes a stale socket of minivirt's and refuses everything else.
func (l Ledger) makeRoom(abs, path string) error {
	id, kind, err := stat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket %s: %w", path, err)
	}
	if kind != unix.S_IFSOCK {
		return fmt.Errorf("%s exists and is %s, %w; move it away", path, describe(kind), ErrNotOurs)
	}
	live, probeErr := listening(abs)
	if probeErr == nil && live {
		return fmt.Errorf("%s: %w; stop it or give another path", path, ErrInUse)
	}
	rec, recorded := l.read(abs)
	if !recorded || !rec.is(id) {
		if recorded {
			l.drop(abs) // of a socket no longer there
		}
		what := "a socket nobody listens on"
		if probeErr != nil {
			what = "a socket"
		}
		return fmt.Errorf("%s exists and is %s, but %w (no record of it in %s); move it away", path, what, ErrNotOurs, l.Dir)
	}
	if probeErr != nil {
		return fmt.Errorf("%s: cannot tell whether a process listens there (%w); left in place", path, probeErr)
	}
	// A stale socket of an earlier minivirt process. The path is looked at
	// again right before the unlink: what is there now must be that socket.
	if err := unlinkIf(abs, id); err != nil {
		return fmt.Errorf("removing the stale socket %s: %w", path, err)
	}
	l.drop(abs)
	return nil
}

// identity tells one socket file from any other, also from a later file
// that reuses its inode number where the filesystem keeps birth times.
type identity struct {
	Dev, Ino uint64
	Btime    int64 // nanoseconds since the epoch; 0 where not kept
}

// record is one socket in the ledger, kept as JSON in a file named by a hash
// of the socket's path.
type record struct {
	Path  string `json:"path"`
	Dev   uint64 `json:"dev"`
	Ino   uint64 `json:"ino"`
	Btime int64  `json:"btime,omitempty"`
}

func (r record) is(id identity) bool {
	return r.Dev == id.Dev && r.Ino == id.Ino && r.Btime == id.Btime
}

// lock opens the ledger directory, making it when missing, checks it, and
// holds an exclusive lock on it until unlock. unlock removes the directory
// once it holds no record, so a ledger leaves nothing behind when every
// socket in it is gone.
func (l Ledger) lock() (unlock func(), err error) {
	if l.Dir == "" {
		return nil, errors.New("socket ledger: no directory given")
	}
	for attempt := 0; ; attempt++ {
		fd, err := l.open()
		if errors.Is(err, fs.ErrNotExist) && attempt < 100 {
			continue // removed, empty, between our mkdir and open
		}
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("socket ledger %s: %w", l.Dir, err)
		}
		// The holder of the lock before us may have removed the directory,
		// empty; then ours is locked but gone, and we start over.
		var held, now unix.Stat_t
		if unix.Fstat(fd, &held) == nil && unix.Lstat(l.Dir, &now) == nil && held.Dev == now.Dev && held.Ino == now.Ino {
			return func() {
				unix.Rmdir(l.Dir) // fails, harmlessly, while a record is left
				unix.Close(fd)    // and releases the lock
			}, nil
		}
		unix.Close(fd)
		if attempt == 100 {
			return nil, fmt.Errorf("socket ledger %s keeps vanishing", l.Dir)
		}
	}
}

// open makes the ledger directory when missing and opens it, refusing one
// that anybody but the user could write to.
func (l Ledger) open() (int, error) {
	if err := os.Mkdir(l.Dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return -1, fmt.Errorf("socket ledger: %w", err)
	}
	fd, err := unix.Open(l.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket ledger %s: %w (it must be a directory, not a symbolic link)", l.Dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("socket ledger %s: %w", l.Dir, err)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o022 != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("socket ledger %s: owned by uid %d with mode %04o, but it must be yours alone (uid %d, mode 0700), or others could claim any socket; remove it", l.Dir, st.Uid, st.Mode&0o7777, os.Geteuid())
	}
	return fd, nil
}

// file is where the record of the socket at abs lives.
func (l Ledger) file(abs string) string {
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(l.Dir, hex.EncodeToString(sum[:16]))
}

// read returns the record of abs; an unreadable record counts as none, so
// the socket is refused rather than removed.
func (l Ledger) read(abs string) (record, bool) {
	data, err := os.ReadFile(l.file(abs))
	if err != nil {
		return record{}, false
	}
	var r record
	if json.Unmarshal(data, &r) != nil || r.Path != abs {
		return record{}, false
	}
	return r, true
}

// write stores r atomically: a reader sees the old record or the new one.
func (l Ledger) write(r record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(l.Dir, ".new-*")
	if err != nil {
		return fmt.Errorf("socket ledger: %w", err)
	}
	_, err = tmp.Write(append(data, '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), l.file(r.Path))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("socket ledger: %w", err)
	}
	return nil
}

func (l Ledger) drop(abs string) { os.Remove(l.file(abs)) }

// stat returns what is at path, not following a symbolic link.
func stat(path string) (identity, uint32, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
		return identity{}, 0, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return identityOf(&st), uint32(st.Mode) & unix.S_IFMT, nil
}

func identityOf(st *unix.Statx_t) identity {
	id := identity{Dev: unix.Mkdev(st.Dev_major, st.Dev_minor), Ino: st.Ino}
	if st.Mask&unix.STATX_BTIME != 0 {
		id.Btime = st.Btime.Sec*int64(time.Second) + int64(st.Btime.Nsec)
	}
	return id
}

// restrict gives the socket just bound at abs its mode and owner, and
// returns its identity. It works on a descriptor of the file itself, so a
// symbolic link put at the path meanwhile is not followed.
func restrict(abs string, mode os.FileMode, uid, gid int) (identity, error) {
	fd, err := unix.Open(abs, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return identity{}, err
	}
	defer unix.Close(fd)
	var st unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_TYPE|unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
		return identity{}, err
	}
	if uint32(st.Mode)&unix.S_IFMT != unix.S_IFSOCK {
		return identity{}, errors.New("replaced by something else right after the bind")
	}
	id := identityOf(&st)
	// An O_PATH descriptor cannot be chmod-ed directly; its /proc link can,
	// and it leads to this inode whatever the path holds now.
	if err := unix.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), uint32(mode.Perm())); err != nil {
		return id, fmt.Errorf("chmod: %w", err)
	}
	if uid >= 0 || gid >= 0 {
		if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH); err != nil {
			return id, fmt.Errorf("chown to %d:%d: %w", uid, gid, err)
		}
	}
	return id, nil
}

// unlinkIf unlinks abs if it still holds the socket id; otherwise it leaves
// the path alone. Nothing at abs is no error.
func unlinkIf(abs string, id identity) error {
	now, kind, err := stat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if kind != unix.S_IFSOCK || now != id {
		return nil // not ours any more: someone else's file stays
	}
	if err := unix.Unlink(abs); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// listening reports whether a process accepts connections on the socket at
// abs. Only a refused connection means nobody does; any other failure is
// returned, and the caller keeps the socket.
func listening(abs string) (bool, error) {
	c, err := net.DialTimeout("unix", abs, dialTimeout)
	if err == nil {
		c.Close()
		return true, nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return false, nil
	}
	return false, err
}

// describe names a file type for an error.
func describe(kind uint32) string {
	switch kind {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFLNK:
		return "a symbolic link"
	case unix.S_IFIFO:
		return "a named pipe"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "a device"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return "not a socket"
}
