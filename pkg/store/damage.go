package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrDamaged is wrapped by every error that reports the state database as
// damaged: its file cannot be read as the database it claims to be (cut
// short, overwritten, or holding pages that are not what the pages pointing
// at them say). Test for it with errors.Is.
var ErrDamaged = errors.New("state database damaged")

// DamagedError names the damaged database file, what was found wrong with
// it and what the user can do: the store cannot repair it, and must not
// write to it.
type DamagedError struct {
	Path   string
	Reason string // what was found, in bbolt's words or the store's
	Err    error  // bbolt's error, when it returned one rather than panicking
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("state database %s is damaged (%s): move it away and restore a backup, or start afresh with an empty state directory",
		e.Path, strings.Join(strings.Fields(e.Reason), " "))
}

// Is makes errors.Is(err, ErrDamaged) true.
func (e *DamagedError) Is(target error) bool { return target == ErrDamaged }

// Unwrap returns bbolt's error, if any.
func (e *DamagedError) Unwrap() error { return e.Err }

// safely runs fn, which reads the database through bbolt, and turns a panic
// into a *DamagedError, returned as damage; err is fn's own result. After a
// panic the bbolt DB must not be used again: it may hold its internal locks.
//
// bbolt trusts the file it maps. A page that is not what its parent says
// fails an assertion, a panic. A page past the end of a file cut short lies
// in the mapping but not in the file, and reading it raises SIGBUS, which
// kills the process unless the goroutine has asked for a panic instead
// (debug.SetPanicOnFault, meant for just this: memory-mapped files).
func safely(path string, fn func() error) (damage *DamagedError, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		if bug, ok := r.(callerPanic); ok {
			panic(bug.value) // not damage: let it go on as it began
		}
		damage = &DamagedError{Path: path, Reason: panicReason(r)}
	}()
	return nil, fn()
}

// panicReason words a panic recovered from bbolt.
func panicReason(r any) string {
	if fault, ok := r.(interface{ Addr() uintptr }); ok {
		return fmt.Sprintf("reading a page faulted at %#x: the file is shorter than its pages, or unreadable", fault.Addr())
	}
	return fmt.Sprintf("bbolt: %v", r)
}

// callerPanic carries a panic of code that is not bbolt's out through
// safely, which would otherwise take it for damage of the file.
type callerPanic struct{ value any }

// String words the panic for the runtime's report of a panic in flight.
func (c callerPanic) String() string { return fmt.Sprintf("%v (inside a store transaction)", c.value) }

// ownCode runs fn, code that runs inside a transaction but is not bbolt's
// (a caller's callback, the domain package): a panic there is a bug of that
// code, and reaches the caller as the panic it is, not as a damaged
// database that the user would be told to throw away.
func ownCode(fn func() error) error {
	defer func() {
		if r := recover(); r != nil {
			panic(callerPanic{r})
		}
	}()
	return fn()
}

// accessError reports whether err, from bbolt.Open, is the system refusing
// access to the file (its permissions, a read-only file system, no
// memory to map it) rather than bbolt refusing its contents.
func accessError(err error) bool {
	var pathErr *fs.PathError
	var errno syscall.Errno
	return errors.As(err, &pathErr) || errors.As(err, &errno)
}

// release unlocks and closes the file of a DB that bbolt panicked in, which
// is never closed. The unlock must be explicit: bbolt's mapping of the file
// keeps it open, and a flock lasts as long as the open file does. The
// mapping itself stays until the process exits.
func release(f *os.File) error {
	if f == nil {
		return nil
	}
	return errors.Join(unix.Flock(int(f.Fd()), unix.LOCK_UN), f.Close())
}
