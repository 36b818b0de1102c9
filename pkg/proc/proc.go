// Package proc identifies processes across pid reuse and host reboots.
//
// A pid alone is not an identity: after the process exits, or after a host
// reboot, the same number can belong to another process. An ID adds the boot
// id of the kernel and the process's start time, and Alive trusts a pid only
// while both still match. The package also decides what a child process
// inherits: the descriptors and environment it is given, nothing else.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// ID identifies one process of one boot of the host.
type ID struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"` // clock ticks after boot, /proc/PID/stat field 22
	BootID    string `json:"boot_id"`
}

// IsZero reports whether id names no process.
func (id ID) IsZero() bool { return id.PID == 0 }

// BootID returns the kernel's boot id.
func BootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("reading boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Lookup returns the identity of the running process pid.
func Lookup(pid int) (ID, error) {
	boot, err := BootID()
	if err != nil {
		return ID{}, err
	}
	start, err := startTime(pid)
	if err != nil {
		return ID{}, err
	}
	return ID{PID: pid, StartTime: start, BootID: boot}, nil
}

// Self returns the identity of the calling process.
func Self() (ID, error) { return Lookup(os.Getpid()) }

// Alive reports whether the process id names is still running. A zombie
// counts as gone once it is the last of its threads: a killed
// multi-threaded process's leader is a zombie while its other threads still
// exit, holding the process's descriptors (its disks, its sockets).
func Alive(id ID) bool {
	if id.PID <= 0 {
		return false
	}
	boot, err := BootID()
	if err != nil || boot != id.BootID {
		return false
	}
	start, err := startTime(id.PID)
	if err != nil || start != id.StartTime {
		return false
	}
	state, err := processState(id.PID)
	if err != nil {
		return false
	}
	if state == 'Z' || state == 'X' {
		tasks, _ := os.ReadDir("/proc/" + strconv.Itoa(id.PID) + "/task")
		return len(tasks) > 1
	}
	return true
}

// Signal sends sig to the process id names, only if it is still that process.
func Signal(id ID, sig syscall.Signal) error {
	if !Alive(id) {
		return os.ErrProcessDone
	}
	return syscall.Kill(id.PID, sig)
}

func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	// The command name (field 2) is in parentheses and may hold spaces or ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, errors.New("malformed /proc stat")
	}
	return strings.Fields(string(b[i+1:])), nil // fields[0] is field 3 (state)
}

func startTime(pid int) (uint64, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	if len(f) < 20 {
		return 0, errors.New("malformed /proc stat")
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22
}

func processState(pid int) (byte, error) {
	f, err := statFields(pid)
	if err != nil || len(f) == 0 || len(f[0]) == 0 {
		return 0, errors.New("no state")
	}
	return f[0][0], nil
}

// UIDs returns the real and effective user ids of the running process pid.
func UIDs(pid int) (real, effective int, err error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "Uid:" {
			real, err1 := strconv.Atoi(f[1])
			effective, err2 := strconv.Atoi(f[2])
			if err1 != nil || err2 != nil {
				break
			}
			return real, effective, nil
		}
	}
	return 0, 0, fmt.Errorf("no Uid line in /proc/%d/status", pid)
}

// Root returns the root directory of the running process pid: "/" unless
// it is confined (chroot).
func Root(pid int) (string, error) {
	return os.Readlink("/proc/" + strconv.Itoa(pid) + "/root")
}

// Process is a running process and its arguments.
type Process struct {
	ID
	Argv []string
}

// Find returns the processes of this boot whose argument vectors match
// says yes to. It reads /proc; a process that exits during the scan, or
// whose arguments cannot be read, is passed over.
func Find(match func(argv []string) bool) ([]Process, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	boot, err := BootID()
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		raw, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(raw) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
		if !match(argv) {
			continue
		}
		start, err := startTime(pid)
		if err != nil {
			continue
		}
		if st, err := processState(pid); err != nil || st == 'Z' || st == 'X' {
			continue
		}
		out = append(out, Process{ID{PID: pid, StartTime: start, BootID: boot}, argv})
	}
	return out, nil
}

// HasArgs reports whether argv holds want as consecutive arguments.
func HasArgs(argv []string, want ...string) bool {
	for i := 0; i+len(want) <= len(argv); i++ {
		if slices.Equal(argv[i:i+len(want)], want) {
			return true
		}
	}
	return false
}

// ArgAfter returns the argument that follows flag in argv, or "".
func ArgAfter(argv []string, flag string) string {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	return ""
}
