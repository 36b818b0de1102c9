package manager

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// Snapshot is one internal snapshot of a domain's qcow2 disks, as minivirt
// records it (virsh snapshot-list's columns and more).
type Snapshot struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// State is the domain's state when it was taken: running, paused or
	// shut off.
	State string `json:"state"`
	// VMState says the guest's memory and device state is in it (taken
	// while the domain ran, without --disk-only): reverting goes on from
	// there.
	VMState bool     `json:"vmstate"`
	Disks   []string `json:"disks"` // targets, e.g. vda
	// Left are the disks not in it, read-only ones and CD-ROMs, each
	// said as "TARGET (why)".
	Left   []string `json:"left_out,omitempty"`
	Parent string   `json:"parent,omitempty"`
}

// snapshots is a domain's snapshot record: STATE/snapshots/NAME.json.
type snapshots struct {
	Current   string     `json:"current,omitempty"`
	Snapshots []Snapshot `json:"snapshots"`
}

func (m *Manager) snapshotsPath(name string) string {
	return filepath.Join(m.StateDir, "snapshots", name+".json")
}

func (m *Manager) readSnapshots(name string) (snapshots, error) {
	var s snapshots
	data, err := os.ReadFile(m.snapshotsPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(data, &s); err != nil {
		return s, fmt.Errorf("%s: %w", m.snapshotsPath(name), err)
	}
	return s, nil
}

func (m *Manager) writeSnapshots(name string, s snapshots) error {
	if len(s.Snapshots) == 0 {
		if err := os.Remove(m.snapshotsPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(m.snapshotsPath(name)), 0o700); err != nil {
		return err
	}
	tmp := m.snapshotsPath(name) + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, m.snapshotsPath(name))
}

func (s snapshots) find(snap string) (int, bool) {
	for i, x := range s.Snapshots {
		if x.Name == snap {
			return i, true
		}
	}
	return -1, false
}

// snapshotDisk is a disk an internal snapshot covers.
type snapshotDisk struct{ target, path string }

// snapshotDisks returns the disks an internal snapshot of d covers: every
// writable disk, each of which must be a qcow2 file that is not transient.
// Read-only disks and CD-ROMs are left out, as QEMU leaves them.
func snapshotDisks(d *domain.Domain) ([]snapshotDisk, error) {
	disks, _, err := snapshotDisksLeft(d)
	return disks, err
}

// snapshotDisksLeft is snapshotDisks, with the disks it leaves out and why.
func snapshotDisksLeft(d *domain.Domain) ([]snapshotDisk, []string, error) {
	var out []snapshotDisk
	var left []string
	for _, disk := range d.Devices.Disks {
		target := ""
		if disk.Target != nil {
			target = disk.Target.Dev
		}
		switch {
		case disk.Device == "cdrom" || disk.Device == "floppy":
			left = append(left, target+" ("+disk.Device+")")
			continue
		case disk.ReadOnly != nil:
			left = append(left, target+" (read-only)")
			continue
		}
		if disk.Transient != nil {
			return nil, nil, fmt.Errorf("disk %s is transient: its writes are thrown away, so it has no snapshot; remove <transient/> or detach it", target)
		}
		if disk.Source == nil || disk.Source.File == nil || disk.Source.File.File == "" {
			return nil, nil, fmt.Errorf("disk %s is not a file: internal snapshots need qcow2 files", target)
		}
		format := "raw"
		if disk.Driver != nil && disk.Driver.Type != "" {
			format = disk.Driver.Type
		}
		if format != "qcow2" {
			return nil, nil, fmt.Errorf("disk %s (%s) is %s: internal snapshots need qcow2 disks (convert it with qemu-img convert -O qcow2)", target, disk.Source.File.File, format)
		}
		out = append(out, snapshotDisk{target, disk.Source.File.File})
	}
	if len(out) == 0 {
		return nil, nil, errors.New("the domain has no writable qcow2 disk to snapshot")
	}
	return out, left, nil
}

// checkSnapshotName refuses names that qemu-img or a file name cannot carry.
func checkSnapshotName(snap string) error {
	if snap == "" || len(snap) > 127 || strings.ContainsAny(snap, "/\\\x00\n") || strings.TrimSpace(snap) != snap {
		return fmt.Errorf("snapshot name %q: give 1-127 characters, without / \\ or a line break, and no surrounding spaces", snap)
	}
	return nil
}

// SnapshotOptions are the choices of one snapshot-create-as.
type SnapshotOptions struct {
	// DiskOnly leaves the guest's memory out of a running domain's
	// snapshot (virsh --disk-only).
	DiskOnly bool
}

// SnapshotCreate takes an internal snapshot named snap of the domain's
// writable qcow2 disks (virsh snapshot-create-as): with the guest's memory
// and device state when the domain runs (QMP snapshot-save), of the disks
// alone with DiskOnly or when it is shut off (qemu-img snapshot -c). A raw
// or transient disk refuses it, by name. It becomes the current snapshot.
func (m *Manager) SnapshotCreate(ctx context.Context, name, snap string, opt SnapshotOptions) (Snapshot, error) {
	if err := checkSnapshotName(snap); err != nil {
		return Snapshot{}, err
	}
	d, o, err := m.Observe(name)
	if err != nil {
		return Snapshot{}, err
	}
	disks, left, err := snapshotDisksLeft(d)
	if err != nil {
		return Snapshot{}, fmt.Errorf("snapshot-create-as %s: %w", name, err)
	}
	rec, err := m.readSnapshots(name)
	if err != nil {
		return Snapshot{}, err
	}
	if _, ok := rec.find(snap); ok {
		return Snapshot{}, fmt.Errorf("domain %s already has a snapshot %s", name, snap)
	}
	s := Snapshot{Name: snap, Created: time.Now().UTC(), State: o.State, Parent: rec.Current, Left: left}
	for _, disk := range disks {
		s.Disks = append(s.Disks, disk.target)
	}
	if o.Active() {
		if _, _, err := m.running(name); err != nil {
			return Snapshot{}, err
		}
		s.VMState = !opt.DiskOnly
		if err := m.snapshotCall(ctx, name, supervisor.SnapshotRequest{Action: supervisor.SnapshotCreate, Name: snap, DiskOnly: opt.DiskOnly}, disks); err != nil {
			return Snapshot{}, err
		}
	} else if err := qemuImgSnapshot(ctx, "-c", snap, disks); err != nil {
		return Snapshot{}, fmt.Errorf("snapshot-create-as %s: %w", name, err)
	}
	rec.Snapshots = append(rec.Snapshots, s)
	rec.Current = snap
	return s, m.writeSnapshots(name, rec)
}

// SnapshotList returns the domain's snapshots, oldest first.
func (m *Manager) SnapshotList(name string) ([]Snapshot, error) {
	if _, err := m.Get(name); err != nil {
		return nil, err
	}
	rec, err := m.readSnapshots(name)
	return rec.Snapshots, err
}

// SnapshotCurrent returns the domain's current snapshot: the one last
// taken or reverted to.
func (m *Manager) SnapshotCurrent(name string) (string, error) {
	if _, err := m.Get(name); err != nil {
		return "", err
	}
	rec, err := m.readSnapshots(name)
	if err != nil {
		return "", err
	}
	if rec.Current == "" {
		return "", fmt.Errorf("domain %s has no current snapshot", name)
	}
	return rec.Current, nil
}

// SnapshotRevert reverts the domain's disks, and with them the guest when
// the snapshot holds its state, to snapshot snap (virsh snapshot-revert).
// A snapshot with the guest's state is loaded into the running domain
// (snapshot-load), or into one started for it when the domain is shut
// off; it then runs, or stays paused when it was paused. A snapshot of
// the disks alone needs the domain shut off (qemu-img snapshot -a).
func (m *Manager) SnapshotRevert(ctx context.Context, name, snap string) error {
	o, rec, i, disks, err := m.snapshotOf("snapshot-revert", name, snap)
	if err != nil {
		return err
	}
	s := rec.Snapshots[i]
	switch {
	case s.VMState:
		if !o.Active() {
			if _, err := m.Start(ctx, name, StartOptions{Paused: true}); err != nil {
				return fmt.Errorf("snapshot-revert %s: starting it for the snapshot: %w", name, err)
			}
		} else if _, _, err := m.running(name); err != nil {
			return err
		}
		if err := m.snapshotCall(ctx, name, supervisor.SnapshotRequest{Action: supervisor.SnapshotRevert, Name: snap}, disks); err != nil {
			return err
		}
		_, o, err = m.Observe(name)
		if err != nil {
			return err
		}
		switch {
		case s.State == StateRunning && o.State == StatePaused:
			err = m.Resume(ctx, name)
		case s.State == StatePaused && o.State == StateRunning:
			err = m.Suspend(ctx, name)
		}
		if err != nil {
			return fmt.Errorf("snapshot-revert %s: %w", name, err)
		}
	case o.Active():
		return fmt.Errorf("snapshot %s of %s holds its disks only: shut the domain off first (minivirt shutdown %s, or destroy)", snap, name, name)
	default:
		if err := qemuImgSnapshot(ctx, "-a", snap, disks); err != nil {
			return fmt.Errorf("snapshot-revert %s: %w", name, err)
		}
	}
	rec.Current = snap
	return m.writeSnapshots(name, rec)
}

// SnapshotDelete deletes snapshot snap from the domain's disks and from
// minivirt's record (virsh snapshot-delete). When it was the current one,
// its parent becomes current.
func (m *Manager) SnapshotDelete(ctx context.Context, name, snap string) error {
	o, rec, i, disks, err := m.snapshotOf("snapshot-delete", name, snap)
	if err != nil {
		return err
	}
	if o.Active() {
		if _, _, err := m.running(name); err != nil {
			return err
		}
		if err := m.snapshotCall(ctx, name, supervisor.SnapshotRequest{Action: supervisor.SnapshotDelete, Name: snap}, disks); err != nil {
			return err
		}
	} else if err := qemuImgSnapshot(ctx, "-d", snap, disks); err != nil {
		return fmt.Errorf("snapshot-delete %s: %w", name, err)
	}
	deleted := rec.Snapshots[i]
	rec.Snapshots = append(rec.Snapshots[:i], rec.Snapshots[i+1:]...)
	for j := range rec.Snapshots {
		if rec.Snapshots[j].Parent == snap {
			rec.Snapshots[j].Parent = deleted.Parent
		}
	}
	if rec.Current == snap {
		rec.Current = deleted.Parent
	}
	return m.writeSnapshots(name, rec)
}

// snapshotOf finds the domain's snapshot snap for verb: the domain's
// state, its snapshot record and snap's index in it, and the disks.
func (m *Manager) snapshotOf(verb, name, snap string) (Observed, snapshots, int, []snapshotDisk, error) {
	d, o, err := m.Observe(name)
	if err != nil {
		return o, snapshots{}, 0, nil, err
	}
	rec, err := m.readSnapshots(name)
	if err != nil {
		return o, rec, 0, nil, err
	}
	i, ok := rec.find(snap)
	if !ok {
		return o, rec, 0, nil, fmt.Errorf("domain %s has no snapshot %s (see minivirt snapshot-list %s)", name, snap, name)
	}
	disks, err := snapshotDisks(d)
	if err != nil {
		return o, rec, 0, nil, fmt.Errorf("%s %s: %w", verb, name, err)
	}
	return o, rec, i, disks, nil
}

// snapshotCall asks the running domain's supervisor for a snapshot job on
// disks.
func (m *Manager) snapshotCall(ctx context.Context, name string, req supervisor.SnapshotRequest, disks []snapshotDisk) error {
	for _, disk := range disks {
		req.Drives = append(req.Drives, launcher.DriveID(disk.target))
	}
	ctx, cancel := context.WithTimeout(ctx, saveTimeout)
	defer cancel()
	if _, err := m.call(ctx, name, supervisor.Request{Op: supervisor.OpSnapshot, Snapshot: &req}); err != nil {
		return fmt.Errorf("snapshot %s of %s: %w", req.Name, name, err)
	}
	return nil
}

// qemuImgSnapshot runs qemu-img snapshot with flag (-c, -a or -d) and snap
// on each disk of a domain that is shut off.
func qemuImgSnapshot(ctx context.Context, flag, snap string, disks []snapshotDisk) error {
	for _, disk := range disks {
		out, err := exec.CommandContext(ctx, "qemu-img", "snapshot", flag, snap, disk.path).CombinedOutput()
		if err != nil {
			return fmt.Errorf("disk %s: qemu-img snapshot %s %s %s: %v: %s", disk.target, flag, snap, disk.path, err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
