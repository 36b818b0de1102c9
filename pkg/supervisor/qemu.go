package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"

	"libvirt.org/go/libvirtxml"

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

// CheckHost checks what the domain needs of the host at start: files,
// block devices, sockets and directories that must exist, QEMU's block
// drivers for network disks, huge pages, the image chains <backingStore>
// describes, and vmchannel targets (absent is a warning: the service may
// start later; present but not a socket is an error). qemuImg is the
// qemu-img beside the domain's QEMU.
func CheckHost(ctx context.Context, d *domain.Domain, qemuImg string) (warnings []string, err error) {
	type need struct{ elem, path string }
	needs := []need{{"os kernel", d.OS.Kernel}, {"os initrd", d.OS.Initrd}}
	if d.OS.Loader != nil {
		needs = append(needs, need{"os loader", d.OS.Loader.Path})
	}
	for _, disk := range d.Devices.Disks {
		where := "disk " + disk.Target.Dev
		switch s := disk.Source; {
		case domain.Empty(disk):
		case s.File != nil:
			needs = append(needs, need{where + " source file", s.File.File})
		case s.Block != nil:
			needs = append(needs, need{where + " source dev", s.Block.Dev})
		case s.Network != nil:
			n := s.Network
			if n.Protocol == "nbd" && len(n.Hosts) > 0 && n.Hosts[0].Transport == "unix" {
				needs = append(needs, need{where + " source host socket", n.Hosts[0].Socket})
			}
			if mod := blockModule(n.Protocol); mod != "" {
				if _, err := os.Stat(mod); err != nil {
					return nil, fmt.Errorf("%s source protocol %s: this host's QEMU has no %s block driver (%s); install Debian's qemu-block-extra", where, n.Protocol, n.Protocol, mod)
				}
			}
		}
	}
	for _, sh := range d.Shares() {
		where := "filesystem " + sh.Tag + " source dir"
		fi, err := os.Stat(sh.Source)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", where, sh.Source, unwrap(err))
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("%s %s: not a directory", where, sh.Source)
		}
	}
	for _, e := range d.FWCfg() {
		needs = append(needs, need{"sysinfo fwcfg entry " + e.Name + " file", e.File})
	}
	for _, n := range needs {
		if n.path == "" {
			continue
		}
		if _, err := os.Stat(n.path); err != nil {
			return nil, fmt.Errorf("%s %s: %w", n.elem, n.path, unwrap(err))
		}
	}
	if kib := d.Backing().HugePageKiB; kib != 0 {
		if err := checkHugePages(kib, d.Memory.Value); err != nil {
			return nil, err
		}
	}
	for _, disk := range d.Devices.Disks {
		if disk.BackingStore != nil && disk.Source != nil && (disk.Source.File != nil || disk.Source.Block != nil) {
			if err := checkBackingChain(ctx, qemuImg, disk); err != nil {
				return nil, err
			}
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

// qemuImgBeside is the qemu-img of the same installation as qemu.
func qemuImgBeside(qemu string) string {
	if !filepath.IsAbs(qemu) {
		return "qemu-img"
	}
	return filepath.Join(filepath.Dir(qemu), "qemu-img")
}

// qemuModuleDir is where Debian's QEMU keeps its loadable block drivers.
const qemuModuleDir = "/usr/lib/x86_64-linux-gnu/qemu"

// blockModule is the QEMU module a network protocol needs, or "" when QEMU
// has it built in.
func blockModule(protocol string) string {
	switch protocol {
	case "http", "https", "ftp", "ftps":
		return filepath.Join(qemuModuleDir, "block-curl.so")
	case "iscsi":
		return filepath.Join(qemuModuleDir, "block-iscsi.so")
	}
	return ""
}

// checkHugePages refuses huge pages the host does not have enough of.
func checkHugePages(pageKiB, memKiB uint) error {
	dir := fmt.Sprintf("/sys/kernel/mm/hugepages/hugepages-%dkB", pageKiB)
	data, err := os.ReadFile(filepath.Join(dir, "free_hugepages"))
	if err != nil {
		return fmt.Errorf("memoryBacking hugepages page size %d KiB: this host has no such huge pages (%s)", pageKiB, dir)
	}
	free, _ := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if need := (uint64(memKiB) + uint64(pageKiB) - 1) / uint64(pageKiB); free < need {
		return fmt.Errorf("memoryBacking hugepages: the guest needs %d pages of %d KiB, this host has %d free (%s/nr_hugepages)", need, pageKiB, free, dir)
	}
	return nil
}

// checkBackingChain compares the chain <backingStore> describes with the
// image's own, as qemu-img reads it: each level's file and format, and an
// empty <backingStore/> where the chain ends. QEMU follows the image's own
// chain, so a description that disagrees would misread the disk.
func checkBackingChain(ctx context.Context, qemuImg string, disk libvirtxml.DomainDisk) error {
	where := "disk " + disk.Target.Dev + " backingStore"
	file := ""
	if disk.Source.File != nil {
		file = disk.Source.File.File
	} else {
		file = disk.Source.Block.Dev
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, qemuImg, "info", "--backing-chain", "--output=json", "-U", file).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			msg, _, _ := strings.Cut(strings.TrimSpace(string(ee.Stderr)), "\n")
			return fmt.Errorf("%s: qemu-img cannot read the chain of %s: %s", where, file, msg)
		}
		return fmt.Errorf("%s: running qemu-img: %w", where, err)
	}
	var chain []struct {
		Filename        string `json:"filename"`
		Format          string `json:"format"`
		FullBackingFile string `json:"full-backing-filename"`
		BackingFile     string `json:"backing-filename"`
		BackingFormat   string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal(out, &chain); err != nil {
		return fmt.Errorf("%s: reading qemu-img's answer: %w", where, err)
	}
	level := 0
	for bs := disk.BackingStore; bs != nil; bs = bs.BackingStore {
		if level >= len(chain) {
			return fmt.Errorf("%s: describes more levels than %s has (%d)", where, file, len(chain)-1)
		}
		img := chain[level]
		if bs.Source == nil || reflect.ValueOf(*bs.Source).IsZero() { // <backingStore/>: the chain ends here
			if img.BackingFile != "" {
				return fmt.Errorf("%s: says %s has no backing image, but it has %s; describe it or remove <backingStore>", where, img.Filename, img.BackingFile)
			}
			return nil
		}
		want := ""
		switch {
		case bs.Source.File != nil:
			want = bs.Source.File.File
		case bs.Source.Block != nil:
			want = bs.Source.Block.Dev
		default:
			return fmt.Errorf("%s: level %d is not a file or block device; minivirt checks only those", where, level+1)
		}
		got := img.FullBackingFile
		if got == "" {
			got = img.BackingFile
		}
		if got == "" {
			return fmt.Errorf("%s: %s has no backing image, but the domain names %s", where, img.Filename, want)
		}
		if filepath.Clean(got) != filepath.Clean(want) {
			return fmt.Errorf("%s: %s is backed by %s, not %s; fix <backingStore> or remove it", where, img.Filename, got, want)
		}
		if bs.Format != nil && bs.Format.Type != "" && level+1 < len(chain) && chain[level+1].Format != bs.Format.Type {
			return fmt.Errorf("%s: %s is %s, not %s", where, want, chain[level+1].Format, bs.Format.Type)
		}
		level++
	}
	return nil
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
