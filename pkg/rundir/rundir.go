// Package rundir owns a domain's runtime directory, RUN/NAME: its layout
// (the supervisor's sockets, QEMU's pid file, the chroot), its claim by one
// supervisor, what it says of that supervisor, and its removal. minivirt
// removes only what it made: the directory carries a marker from the moment
// it becomes visible, and only the files named here are ever removed from it.
package rundir

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/store"
	"github.com/minivirt/minivirt/pkg/unixsock"
)

// Files of a runtime directory that are not in Paths. Anything else found
// there stays, and so does the directory.
const (
	markerFile = ".minivirt-rundir"
	ownerFile  = "supervisor.id"
	// pendingFile holds the final record of a domain while the store
	// cannot take it (see writePending).
	pendingFile = "final.json"
)

// Paths are the files of one domain's runtime directory.
type Paths struct {
	QMP, Console, Control, Relay string
	// Net is where the supervisor serves the guest's NIC (vhost-user) and
	// QEMU connects as it starts.
	Net string
	// QEMUConsole is QEMU's own end of the primary console, one client at
	// a time: the supervisor, which shares it at Console; with the
	// supervisor gone, whoever needs the guest's console.
	QEMUConsole string
	// PIDFile is written by QEMU itself before it runs guest code: it
	// identifies a QEMU of this domain that no record names (its
	// supervisor killed while starting it).
	PIDFile string
	// Chroot is the empty directory QEMU is confined to, where the domain
	// qualifies.
	Chroot string
}

// PathsIn returns the layout of the runtime directory dir.
func PathsIn(dir string) Paths {
	return Paths{
		QMP:         filepath.Join(dir, "qmp.sock"),
		Console:     filepath.Join(dir, "console.sock"),
		QEMUConsole: filepath.Join(dir, "qemu-console.sock"),
		Control:     filepath.Join(dir, "control.sock"),
		Relay:       filepath.Join(dir, "relay.sock"),
		Net:         filepath.Join(dir, "net.sock"),
		PIDFile:     filepath.Join(dir, "qemu.pid"),
		Chroot:      filepath.Join(dir, "root"),
	}
}

// knownFiles are the only names minivirt removes from a runtime directory.
func knownFiles(dir string) []string {
	p := PathsIn(dir)
	return []string{p.QMP, p.Console, p.QEMUConsole, p.Control, p.Relay, p.Net, p.PIDFile, filepath.Join(dir, pendingFile), p.Chroot, filepath.Join(dir, ownerFile), filepath.Join(dir, markerFile)}
}

// CheckDir checks a directory minivirt keeps sockets in: a real directory
// (not a symlink), owned by the user who runs minivirt, that no group or
// other user can write to. Anything else would let another local user
// replace the sockets minivirt and QEMU trust.
func CheckDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("runtime directory %s: %w", dir, unwrap(err))
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("runtime directory %s is a symbolic link; minivirt uses only a directory of its own: remove the link or give another --run-dir", dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("runtime directory %s is not a directory; move it away or give another --run-dir", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("runtime directory %s belongs to uid %d, not to you (uid %d); remove it or give another --run-dir", dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("runtime directory %s has mode %04o: others can write to it; run `chmod go-w %s` or give another --run-dir", dir, fi.Mode().Perm(), dir)
	}
	return nil
}

// EnsureRoot creates the runtime root (mode 0700) when it is missing and
// checks it.
func EnsureRoot(root string) error {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("runtime directory %s: %w", root, unwrap(err))
	}
	return CheckDir(root)
}

// State is what a domain's runtime directory says of its supervisor.
type State int

// Runtime directory states.
const (
	Absent  State = iota // no directory
	Live                 // made by minivirt; its supervisor runs
	Stale                // made by minivirt; its supervisor is gone
	Foreign              // not made by minivirt: never touched
)

// Inspect tells, without changing anything, what dir is.
func Inspect(dir string) (State, proc.ID, error) {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return Absent, proc.ID{}, nil
	}
	if err := CheckDir(dir); err != nil {
		return Foreign, proc.ID{}, err
	}
	if _, err := os.Lstat(filepath.Join(dir, markerFile)); err != nil {
		return Foreign, proc.ID{}, fmt.Errorf("runtime directory %s was not made by minivirt (no %s in it); move it away", dir, markerFile)
	}
	owner, ok := Owner(dir)
	if ok && proc.Alive(owner) {
		return Live, owner, nil
	}
	return Stale, owner, nil
}

// Claim makes dir, the runtime directory of one domain, for the calling
// supervisor. The directory is made under a temporary name with its marker
// and owner inside, then renamed into place without replacing anything: no
// other command ever sees it half made, so none can take it for stale. A
// stale directory minivirt made is cleaned first; a live one means the
// domain runs; anything else is refused and left alone.
func Claim(dir string, self proc.ID) error {
	root := filepath.Dir(dir)
	if err := EnsureRoot(root); err != nil {
		return err
	}
	var r [6]byte
	rand.Read(r[:])
	tmp := filepath.Join(root, "."+filepath.Base(dir)+".claim-"+hex.EncodeToString(r[:]))
	if err := os.Mkdir(tmp, 0o700); err != nil {
		return fmt.Errorf("runtime directory: %w", unwrap(err))
	}
	committed := false
	defer func() {
		if !committed {
			os.Remove(filepath.Join(tmp, markerFile))
			os.Remove(filepath.Join(tmp, ownerFile))
			os.Remove(tmp)
		}
	}()
	if err := os.WriteFile(filepath.Join(tmp, markerFile), []byte("made by minivirt: the runtime directory of one domain\n"), 0o600); err != nil {
		return fmt.Errorf("runtime directory: %w", unwrap(err))
	}
	if err := writeOwner(tmp, self); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, dir, unix.RENAME_NOREPLACE)
		if err == nil {
			committed = true
			return nil
		}
		if !errors.Is(err, unix.EEXIST) || attempt > 0 {
			return fmt.Errorf("runtime directory %s: %w", dir, err)
		}
		state, owner, err := Inspect(dir)
		switch state {
		case Live:
			return fmt.Errorf("domain is already running (supervisor pid %d)", owner.PID)
		case Foreign:
			return err
		case Stale:
			if err := Remove(dir); err != nil {
				return err
			}
		}
	}
}

// Remove removes a runtime directory minivirt made: the files it knows,
// then the directory. Anything else in it stays, and then so does the
// directory, and the error says so.
func Remove(dir string) error {
	if _, err := os.Lstat(filepath.Join(dir, markerFile)); err != nil {
		return fmt.Errorf("runtime directory %s was not made by minivirt; left as it is", dir)
	}
	for _, f := range knownFiles(dir) {
		if filepath.Base(f) == markerFile {
			continue // last: the directory stays marked while anything is left
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cleaning %s: %w", dir, unwrap(err))
		}
	}
	// Sockets minivirt bound for virtio channels without a path of their
	// own, and for virtiofs shares.
	picked, _ := filepath.Glob(filepath.Join(dir, "channel.*.sock"))
	shares, _ := filepath.Glob(filepath.Join(dir, "fs*.virtiofs.sock"))
	for _, f := range append(picked, shares...) {
		if fi, err := os.Lstat(f); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			os.Remove(f)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("cleaning %s: %w", dir, unwrap(err))
	}
	if len(entries) > 1 {
		var names []string
		for _, e := range entries {
			if e.Name() != markerFile {
				names = append(names, e.Name())
			}
		}
		return fmt.Errorf("runtime directory %s holds files minivirt did not make (%v); left as it is: move them away", dir, names)
	}
	if err := os.Remove(filepath.Join(dir, markerFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cleaning %s: %w", dir, unwrap(err))
	}
	if err := os.Remove(dir); err != nil {
		return fmt.Errorf("cleaning %s: %w", dir, unwrap(err))
	}
	return nil
}

func writeOwner(dir string, id proc.ID) error {
	return os.WriteFile(filepath.Join(dir, ownerFile), []byte(fmt.Sprintf("%d %d %s\n", id.PID, id.StartTime, id.BootID)), 0o600)
}

// Owner returns the supervisor that claimed dir, when it says.
func Owner(dir string) (proc.ID, bool) {
	data, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return proc.ID{}, false
	}
	var id proc.ID
	_, err = fmt.Sscanf(string(bytes.TrimSpace(data)), "%d %d %s", &id.PID, &id.StartTime, &id.BootID)
	return id, err == nil
}

func unwrap(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// WritePending keeps a domain's final record in its runtime directory until
// the store has it.
func WritePending(dir string, rt store.Runtime) error {
	data, err := json.Marshal(rt)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, pendingFile+".new")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, pendingFile))
}

// Pending returns the final record a supervisor left in a domain's runtime
// directory because the store could not take it, if there is one.
func Pending(dir string) (store.Runtime, bool) {
	data, err := os.ReadFile(filepath.Join(dir, pendingFile))
	if err != nil {
		return store.Runtime{}, false
	}
	var rt store.Runtime
	if json.Unmarshal(data, &rt) != nil || rt.State == "" {
		return store.Runtime{}, false
	}
	return rt, true
}

// SocketLedger is the ledger of every socket minivirt binds under the
// runtime root root (pkg/unixsock): the supervisors' and `network serve`'s
// alike, so that a socket a killed process left is known as minivirt's to
// whichever comes next, and nothing else is. It lives in the runtime root,
// which CheckDir makes sure only the user can write to; domain names start
// with a letter or digit, so ".sockets" is no domain's directory.
func SocketLedger(root string) unixsock.Ledger {
	return unixsock.Ledger{Dir: filepath.Join(root, ".sockets")}
}
