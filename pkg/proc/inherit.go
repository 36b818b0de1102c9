package proc

import (
	"errors"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// closeRangeCloexec is CLOSE_RANGE_CLOEXEC (linux/close_range.h), which
// x/sys does not name.
const closeRangeCloexec = 1 << 2

// CloseOnExec marks every descriptor from 3 up close-on-exec, so that a
// child process gets only what its caller passes on purpose: Go opens its
// own descriptors close-on-exec, but one inherited from whoever ran this
// process (a shell's `exec 7</secret`) would otherwise reach every child,
// QEMU included, past its chroot. Descriptors a child must have are given
// explicitly (exec.Cmd.ExtraFiles), which duplicates them without the flag.
func CloseOnExec() error {
	err := unix.CloseRange(3, ^uint(0), closeRangeCloexec)
	if err == nil || !(errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)) {
		return err
	}
	// Kernels before 5.11: one descriptor at a time.
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return err
		}
	}
	return nil
}

// SafePath is the PATH a child of minivirt gets when it must not inherit
// the caller's.
const SafePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Environ is a minimal, explicit environment for a child process: PATH,
// LANG=C, and extra (NAME=VALUE), nothing of the caller's.
func Environ(path string, extra ...string) []string {
	if path == "" {
		path = SafePath
	}
	return append([]string{"PATH=" + path, "LANG=C"}, extra...)
}
