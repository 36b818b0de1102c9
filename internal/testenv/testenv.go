// Package testenv prepares what minivirt's real-QEMU tests need: the
// minivirt binary built from this module, and the tiny test guest.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// Root is the module's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Minivirt builds the minivirt binary into dir and returns its path.
func Minivirt(dir string) (string, error) {
	bin := filepath.Join(dir, "minivirt")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/minivirt")
	cmd.Dir = Root()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building minivirt: %v\n%s", err, out)
	}
	return bin, nil
}

// Guest returns the directory of the tiny guest (vmlinuz, initrd.gz):
// $MINIVIRT_GUEST_DIR, else build/guest, built there when missing.
func Guest() (string, error) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "", fmt.Errorf("qemu-system-x86_64 not found: run `make deps` (or `make test`, which does)")
	}
	dir := os.Getenv("MINIVIRT_GUEST_DIR")
	if dir == "" {
		dir = filepath.Join(Root(), "build", "guest")
	}
	if _, err := os.Stat(filepath.Join(dir, "initrd.gz")); err != nil {
		cmd := exec.Command(filepath.Join(Root(), "scripts", "build-guest.sh"), dir)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("building the tiny guest: %v", err)
		}
	}
	return filepath.Abs(dir)
}
