package supervisor

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/launcher"
)

// QEMUUser is the system user QEMU runs as when minivirt runs as root.
// `make deps` creates it; so does the first start that needs it.
const QEMUUser = "minivirt-qemu"

// chrootDir is the empty directory inside a domain's runtime directory
// that QEMU is confined to, where the domain qualifies.
const chrootDir = "root"

// privileges decides how QEMU runs: as root, minivirt has QEMU drop to
// QEMUUser once it has initialised (it opens every file it needs before),
// and confines it to an empty directory when nothing in the domain needs
// the filesystem after start. As another user, QEMU runs as that user, as
// before.
func privileges(d *domain.Domain, env *launcher.Env) error {
	if os.Geteuid() != 0 {
		return nil
	}
	if _, err := user.Lookup(QEMUUser); err != nil {
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", QEMUUser).CombinedOutput()
		if err != nil {
			return fmt.Errorf("creating the system user %s, which QEMU runs as: %v: %s", QEMUUser, err, strings.TrimSpace(string(out)))
		}
	}
	env.RunAs = QEMUUser
	if !launcher.NeedsFilesystem(d) {
		env.Chroot = filepath.Join(env.RunDir, chrootDir)
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
	if env.RunAs == "" || !spawns(plan) {
		return nil
	}
	u, err := user.Lookup(env.RunAs)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(plan.Paths.Relay, uid, gid); err != nil {
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

// spawns reports whether the plan has QEMU spawn the helper.
func spawns(plan launcher.Plan) bool {
	for _, a := range plan.Argv {
		if strings.Contains(a, launcher.HelperCommand) {
			return true
		}
	}
	return false
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
