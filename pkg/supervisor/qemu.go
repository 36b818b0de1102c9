package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/minivirt/minivirt/pkg/domain"
)

// exitText says how QEMU's process ended, and whether that was status 0.
func exitText(err error) (text string, clean bool) {
	if err == nil {
		return "exited with status 0", true
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by signal " + ws.Signal().String(), false
		}
		return fmt.Sprintf("exited with status %d", ee.ExitCode()), false
	}
	return err.Error(), false
}

// qemuWords returns the last lines QEMU wrote to its log since offset.
func qemuWords(path string, offset int64) string {
	data, err := os.ReadFile(path)
	if err != nil || offset > int64(len(data)) {
		return "(no QEMU log)"
	}
	var lines []string
	for _, l := range strings.Split(string(data[offset:]), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "minivirt: ") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "QEMU wrote nothing to " + path
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	return strings.Join(lines, " | ")
}

// CheckHost checks what the domain needs of the host at start: files that
// must exist, and vmchannel targets (absent is a warning: the service may
// start later; present but not a socket is an error).
func CheckHost(d *domain.Domain) (warnings []string, err error) {
	need := map[string]string{"os kernel": d.OS.Kernel, "os initrd": d.OS.Initrd}
	for _, disk := range d.Devices.Disks {
		if disk.Source.File != nil {
			need["disk "+disk.Target.Dev+" source file"] = disk.Source.File.File
		} else {
			need["disk "+disk.Target.Dev+" source dev"] = disk.Source.Block.Dev
		}
	}
	if d.OS.Loader != nil {
		need["os loader"] = d.OS.Loader.Path
	}
	for elem, path := range need {
		if path == "" {
			continue
		}
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("%s %s: %w", elem, path, unwrap(err))
		}
	}
	for _, vc := range d.VMChannels() {
		fi, err := os.Stat(vc.Path)
		switch {
		case err != nil:
			warnings = append(warnings, fmt.Sprintf("vmchannel %s:%d target %s does not exist yet; guest connections are refused until a service listens there", vc.Address, vc.Port, vc.Path))
		case fi.Mode()&os.ModeSocket == 0:
			return nil, fmt.Errorf("vmchannel %s:%d target %s is not a socket (%s); give the path of a listening Unix socket", vc.Address, vc.Port, vc.Path, fi.Mode().Type())
		}
	}
	for _, p := range d.VirtioPorts() {
		if p.Path == "" {
			continue
		}
		if fi, err := os.Lstat(p.Path); err == nil && fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("channel virtio %s source path %s exists and is not a socket", p.Name, p.Path)
		}
	}
	return warnings, nil
}

// prepareNVRAM gives a UEFI domain its own variable store: a copy of the
// template, made once and kept across starts.
func prepareNVRAM(path, template string) error {
	if path == "" {
		return nil
	}
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	if template == "" {
		return fmt.Errorf("os nvram %s: does not exist and there is no template to copy; install Debian's ovmf or give <nvram template=''>", path)
	}
	data, err := os.ReadFile(template)
	if err != nil {
		return fmt.Errorf("os nvram template: %w (install Debian's ovmf)", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("os nvram: %w", err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("os nvram: %w", err)
	}
	return os.Rename(tmp, path)
}

// unwrap drops the path an *fs.PathError repeats: the caller names it.
func unwrap(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
