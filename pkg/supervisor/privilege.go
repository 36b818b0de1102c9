package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/rundir"
	"github.com/minivirt/minivirt/pkg/store"
)

// When minivirt runs as root, each domain's QEMU runs as a uid and gid of
// its own, QEMUIDBase plus the domain's slot (given at its first start,
// kept until undefine): one escaped QEMU can neither signal another
// domain's QEMU nor connect to its sockets. The range lies above the ranges
// that useradd and systemd give out (system and regular users, DynamicUser,
// container ranges up to 1879048191); a slot whose uid or gid names a user
// or group of the host is passed over.
const (
	QEMUIDBase = 2_000_000_000
	QEMUSlots  = 65536
)

// privileges decides how QEMU runs: as root, minivirt has QEMU drop to the
// domain's own uid and gid once it has initialised (it opens every file it
// needs before), and confines it to an empty directory when nothing in the
// domain needs the filesystem after start. As another user, QEMU runs as
// that user, as before.
func privileges(d *domain.Domain, env *launcher.Env, openStore func() (*store.Store, error)) error {
	if os.Geteuid() != 0 {
		return nil
	}
	st, err := openStore()
	if err != nil {
		return err
	}
	slot, err := st.QEMUSlot(d.Name, QEMUSlots, func(slot int) bool {
		id := strconv.Itoa(QEMUIDBase + slot)
		_, uerr := user.LookupId(id)
		_, gerr := user.LookupGroupId(id)
		return uerr != nil && gerr != nil
	})
	st.Close()
	if err != nil {
		return fmt.Errorf("choosing the uid QEMU runs as: %w", err)
	}
	env.RunAsUID, env.RunAsGID = QEMUIDBase+slot, QEMUIDBase+slot
	env.RunAs = fmt.Sprintf("%d:%d", env.RunAsUID, env.RunAsGID)
	if !launcher.NeedsFilesystem(d) {
		env.Chroot = rundir.PathsIn(env.RunDir).Chroot
	}
	return nil
}

// prepareConfinement makes what QEMU needs once it has dropped to RunAs:
// the empty chroot directory, and, where QEMU spawns minivirt's helper,
// a way for the helper (which runs as RunAs too) to reach the relay socket.
func prepareConfinement(env launcher.Env, plan launcher.Plan, self string) error {
	if env.Chroot != "" {
		if err := os.Mkdir(env.Chroot, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("confining QEMU: %w", err)
		}
	}
	if env.RunAs == "" || !plan.SpawnsHelper {
		return nil
	}
	if err := os.Chown(plan.Paths.Relay, env.RunAsUID, env.RunAsGID); err != nil {
		return fmt.Errorf("giving the relay socket to %s: %w", env.RunAs, err)
	}
	// Enter, not list: the runtime root and the domain's directory.
	for _, dir := range []string{filepath.Dir(env.RunDir), env.RunDir} {
		if err := os.Chmod(dir, 0o711); err != nil {
			return err
		}
	}
	for dir := filepath.Dir(filepath.Dir(env.RunDir)); ; dir = filepath.Dir(dir) {
		if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("QEMU runs as %s and its helper must reach %s, but %s is closed to other users: give a --run-dir others can enter, or use <vmchannels network='netstack'/>", env.RunAs, plan.Paths.Relay, dir)
		}
		if dir == "/" {
			break
		}
	}
	if !othersCanExecute(self) {
		return fmt.Errorf("%s runs QEMU as %s, which spawns %s for each guest connection, but %s cannot run it: install minivirt where others can enter and run it, or use <vmchannels network='netstack'/>", "minivirt", env.RunAs, self, env.RunAs)
	}
	return nil
}

// othersCanExecute reports whether a user who is neither owner nor in the
// group can reach and run path.
func othersCanExecute(path string) bool {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o001 == 0 {
		return false
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return false
		}
		if dir == "/" {
			return true
		}
	}
}

// FindQEMU returns the QEMU processes that supervisors started under the
// runtime root runRoot, whether or not any record names them, by domain
// name: a QEMU's pid file lies in its domain's runtime directory. Each
// carries the uuid it runs. QEMUs run elsewhere (another runtime root, or
// libvirt) are not among them.
func FindQEMU(runRoot string) (map[string][]QEMUProcess, error) {
	runRoot = filepath.Clean(runRoot)
	found, err := proc.Find(func(argv []string) bool {
		pidfile := proc.ArgAfter(argv, "-pidfile")
		return pidfile != "" && filepath.Dir(filepath.Dir(pidfile)) == runRoot &&
			pidfile == rundir.PathsIn(filepath.Dir(pidfile)).PIDFile && proc.ArgAfter(argv, "-uuid") != ""
	})
	if err != nil {
		return nil, err
	}
	out := map[string][]QEMUProcess{}
	for _, p := range found {
		name := filepath.Base(filepath.Dir(proc.ArgAfter(p.Argv, "-pidfile")))
		out[name] = append(out[name], QEMUProcess{ID: p.ID, UUID: proc.ArgAfter(p.Argv, "-uuid")})
	}
	return out, nil
}

// QEMUProcess is a QEMU found by FindQEMU.
type QEMUProcess struct {
	proc.ID
	UUID string
}

// FindDomainQEMU returns the QEMUs whose pid file lies in runDir, one
// domain's runtime directory (see FindQEMU).
func FindDomainQEMU(runDir string) ([]proc.ID, error) {
	all, err := FindQEMU(filepath.Dir(runDir))
	if err != nil {
		return nil, err
	}
	var out []proc.ID
	for _, p := range all[filepath.Base(runDir)] {
		out = append(out, p.ID)
	}
	return out, nil
}
