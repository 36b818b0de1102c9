package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/minivirt/minivirt/pkg/qmp"
)

// Snapshot actions of OpSnapshot.
const (
	SnapshotCreate = "create"
	SnapshotRevert = "revert"
	SnapshotDelete = "delete"
)

// SnapshotRequest is an internal snapshot of the running domain's disks:
// created (with the guest's memory and device state unless DiskOnly),
// reverted to, or deleted. Disks are the drive ids to act on (the
// caller has refused the disks that cannot take an internal snapshot).
type SnapshotRequest struct {
	Action   string   `json:"action"`
	Name     string   `json:"name"`
	DiskOnly bool     `json:"disk_only,omitempty"`
	Drives   []string `json:"drives"`
}

// snapshotTimeout bounds one snapshot job: the guest's memory is written
// to or read from the first disk.
const snapshotTimeout = 10 * time.Minute

// diskSnapshot carries out an OpSnapshot request with QEMU's snapshot jobs
// (snapshot-save, snapshot-load, snapshot-delete: QEMU 6.0 and later), or
// for a disk-only snapshot blockdev-snapshot-internal-sync on each drive.
func (s *supervisor) diskSnapshot(req SnapshotRequest) error {
	s.changeMu.Lock()
	defer s.changeMu.Unlock()
	if len(req.Drives) == 0 {
		return errors.New("snapshot: the domain has no disk to snapshot")
	}
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	mon := s.monitor()
	if req.Action == SnapshotCreate && req.DiskOnly {
		for _, drive := range req.Drives {
			if _, err := mon.Run(ctx, "blockdev-snapshot-internal-sync", map[string]string{"device": drive, "name": req.Name}); err != nil {
				return fmt.Errorf("snapshot %s of drive %s: %w", req.Name, drive, err)
			}
		}
		return nil
	}
	nodes, err := nodeNames(ctx, mon, req.Drives)
	if err != nil {
		return err
	}
	job := "minivirt-snapshot"
	args := map[string]any{"job-id": job, "tag": req.Name, "devices": nodes}
	var command string
	switch req.Action {
	case SnapshotCreate:
		command, args["vmstate"] = "snapshot-save", nodes[0]
	case SnapshotRevert:
		command, args["vmstate"] = "snapshot-load", nodes[0]
	case SnapshotDelete:
		command = "snapshot-delete"
	default:
		return fmt.Errorf("snapshot: unknown action %q", req.Action)
	}
	if _, err := mon.Run(ctx, command, args); err != nil {
		return fmt.Errorf("%s %s: %w", command, req.Name, err)
	}
	if err := jobDone(ctx, mon, job); err != nil {
		return fmt.Errorf("%s %s: %w", command, req.Name, err)
	}
	return nil
}

// nodeNames returns the format node of each drive (query-block).
func nodeNames(ctx context.Context, mon qmp.Monitor, drives []string) ([]string, error) {
	out, err := mon.Run(ctx, "query-block", nil)
	if err != nil {
		return nil, err
	}
	var blocks []struct {
		Device   string `json:"device"`
		Inserted *struct {
			NodeName string `json:"node-name"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(out, &blocks); err != nil {
		return nil, fmt.Errorf("query-block: %w", err)
	}
	byDevice := map[string]string{}
	for _, b := range blocks {
		if b.Inserted != nil {
			byDevice[b.Device] = b.Inserted.NodeName
		}
	}
	var nodes []string
	for _, d := range drives {
		n, ok := byDevice[d]
		if !ok {
			return nil, fmt.Errorf("drive %s: QEMU has no medium in it", d)
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// jobDone waits until QEMU's job id has concluded, dismisses it and
// returns its error, at most until ctx ends.
func jobDone(ctx context.Context, mon qmp.Monitor, id string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		out, err := mon.Run(ctx, "query-jobs", nil)
		if err != nil {
			return err
		}
		var jobs []struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Error  string `json:"error"`
		}
		if err := json.Unmarshal(out, &jobs); err != nil {
			return fmt.Errorf("query-jobs: %w", err)
		}
		for _, j := range jobs {
			if j.ID == id && j.Status == "concluded" {
				if _, err := mon.Run(ctx, "job-dismiss", map[string]string{"id": id}); err != nil {
					return err
				}
				if j.Error != "" {
					return errors.New(j.Error)
				}
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("job %s: %w", id, ctx.Err())
		case <-tick.C:
		}
	}
}
