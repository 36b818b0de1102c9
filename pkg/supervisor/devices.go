package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"libvirt.org/go/libvirtxml"

	"github.com/minivirt/minivirt/pkg/domain"

	"github.com/minivirt/minivirt/pkg/qmp"
)

// prepareDevices sets, before the guest runs its first instruction, what
// QEMU's command line cannot say: the balloon's target (<currentMemory>
// below <memory>) and the removable drives whose tray starts open.
func (s *supervisor) prepareDevices(ctx context.Context, mon qmp.Monitor) error {
	if kib := s.plan.BalloonKiB; kib != 0 {
		if _, err := mon.Run(ctx, "balloon", map[string]any{"value": uint64(kib) * 1024}); err != nil {
			return fmt.Errorf("currentMemory %d KiB: setting the balloon's target: %w", kib, err)
		}
	}
	for _, dev := range s.plan.OpenTrays {
		if _, err := mon.Run(ctx, "blockdev-open-tray", map[string]any{"id": dev, "force": true}); err != nil {
			return fmt.Errorf("disk %s target tray open: %w", dev, err)
		}
	}
	return nil
}

// MediaRequest is OpChangeMedia's request: a new medium for the removable
// drive Disk (a cdrom or floppy, by target dev), or none (eject).
type MediaRequest struct {
	Disk string `json:"disk"`
	// Source is the image to insert, an absolute path; empty ejects.
	Source string `json:"source,omitempty"`
	// Force opens a tray the guest has locked.
	Force bool `json:"force,omitempty"`
	// Mode is eject, insert or update: insert refuses a drive with a
	// medium, eject an empty one.
	Mode domain.MediaMode `json:"mode,omitempty"`
}

// changeMedia ejects a removable drive's medium or puts a new one in. The
// supervisor opens the new image first and hands QEMU the descriptor
// (add-fd), so QEMU keeps its sandbox and chroot, and a file that cannot be
// opened changes nothing; then QEMU swaps the medium (blockdev-change-medium
// opens the new one before it takes the old one out). An eject opens the
// tray and takes the medium out. With Force, a tray the guest holds locked
// is opened anyway.
func (s *supervisor) changeMedia(ctx context.Context, req MediaRequest) error {
	s.mu.Lock()
	live := s.live
	s.mu.Unlock()
	if err := live.CheckMediaChange(req.Disk, req.Mode); err != nil {
		return err
	}
	var disk *libvirtxml.DomainDisk
	for i := range live.Devices.Disks {
		if live.Devices.Disks[i].Target.Dev == req.Disk {
			disk = &live.Devices.Disks[i]
		}
	}
	mon := s.monitor()
	locked := func(err error) error {
		return fmt.Errorf("disk %s: %w (the guest may hold the tray locked: give --force)", req.Disk, err)
	}
	if req.Source == "" {
		if _, err := mon.Run(ctx, "blockdev-open-tray", map[string]any{"id": req.Disk, "force": req.Force}); err != nil {
			return locked(err)
		}
		if _, err := mon.Run(ctx, "blockdev-remove-medium", map[string]any{"id": req.Disk}); err != nil {
			return locked(err) // QEMU reports a locked tray here: the open only asked the guest
		}
		s.setMedium(req.Disk, "")
		return nil
	}
	sender, ok := mon.(qmp.FDSender)
	if !ok {
		return errors.New("change-media: the monitor cannot pass descriptors")
	}
	readOnly := disk.Device == "cdrom" || disk.ReadOnly != nil
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(req.Source, flags|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("disk %s source %s: %w", req.Disk, req.Source, unwrap(err))
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && !fi.Mode().IsRegular() {
		return fmt.Errorf("disk %s source %s: not a regular file; a block device goes in with --config (at the next start)", req.Disk, req.Source)
	}
	set, err := sender.AddFD(ctx, f)
	if err != nil {
		return err
	}
	// QEMU holds its own copy once the medium is in: the set goes.
	defer mon.Run(context.WithoutCancel(ctx), "remove-fd", map[string]any{"fdset-id": set})
	if req.Force {
		if _, err := mon.Run(ctx, "blockdev-open-tray", map[string]any{"id": req.Disk, "force": true}); err != nil {
			return locked(err)
		}
	}
	format := "raw"
	if disk.Driver != nil && disk.Driver.Type != "" {
		format = disk.Driver.Type
	}
	mode := "read-write"
	if readOnly {
		mode = "read-only"
	}
	args := map[string]any{"id": req.Disk, "filename": fmt.Sprintf("/dev/fdset/%d", set), "format": format, "read-only-mode": mode}
	if _, err := mon.Run(ctx, "blockdev-change-medium", args); err != nil {
		return locked(fmt.Errorf("putting %s in: %w", req.Source, err))
	}
	s.setMedium(req.Disk, req.Source)
	return nil
}

// setMedium records a drive's medium in the live domain (what a save
// keeps).
func (s *supervisor) setMedium(dev, path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.live.Clone()
	if err := next.SetMedium(dev, path); err != nil {
		s.logf("disk %s: recording the medium: %v", dev, err)
		return
	}
	s.live = next
}
