package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/qmp"
	"github.com/minivirt/minivirt/pkg/savefile"
	"github.com/minivirt/minivirt/pkg/store"
	"github.com/minivirt/minivirt/pkg/usernet"
)

// saveTimeout bounds a save's or a restore's migration stream.
const saveTimeout = 10 * time.Minute

// Descriptor names the supervisor gives QEMU (getfd) for a save and a
// restore.
const (
	saveFD    = "minivirt-save"
	restoreFD = "minivirt-restore"
)

// migrationBandwidth lifts QEMU's default limit of 32 MiB/s on migration,
// which is meant for networks, not for a local file (libvirt does the same
// for virsh save).
const migrationBandwidth = 1 << 50

// save writes the guest's memory and device state to path the way libvirt
// does with QEMU: the supervisor opens the file and QEMU migrates into its
// descriptor (getfd, migrate fd:), so QEMU keeps its sandbox and opens
// nothing. Once the file is sealed QEMU quits and the domain is shut off
// (saved). keepPaused records that a restore should leave the CPUs
// stopped. On failure the file is not left behind and the guest runs on as
// before.
func (s *supervisor) save(path string, keepPaused bool) error {
	s.changeMu.Lock() // no live change while the domain's XML is taken
	defer s.changeMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
	defer cancel()
	mon := s.monitor()
	sender, ok := mon.(qmp.FDSender)
	if !ok {
		return errors.New("save: the QMP monitor cannot pass descriptors")
	}
	s.mu.Lock()
	state, live := s.m.State, s.live
	s.mu.Unlock()
	if state != store.StateRunning && state != store.StatePaused {
		return fmt.Errorf("save: the domain is %s; only a running or paused one can be saved", state)
	}
	xml, err := live.XML()
	if err != nil {
		return err
	}
	h := savefile.Header{XML: string(xml), Running: state == store.StateRunning && !keepPaused, Saved: time.Now().UTC()}
	if leases := s.net.Leases(); len(leases) > 0 {
		h.Leases, _ = json.Marshal(leases)
	}
	w, err := savefile.Create(path, h)
	if err != nil {
		return err
	}
	if state == store.StateRunning {
		if err := qmp.Stop(ctx, mon); err != nil {
			w.Abort()
			return fmt.Errorf("save: stopping the guest: %w", err)
		}
		s.step(Input{Kind: EvStop})
	}
	err = migrate(ctx, mon, sender, w)
	if err == nil {
		if h.Disks, err = diskIdentities(live); err == nil {
			err = w.Seal(h)
		}
	} else {
		w.Abort()
	}
	if err != nil {
		if state == store.StateRunning {
			if cerr := qmp.Cont(ctx, mon); cerr != nil {
				s.logf("save failed, and the guest could not run again: %v", cerr)
			} else {
				s.step(Input{Kind: EvResume})
			}
		}
		return fmt.Errorf("save: %w", err)
	}
	s.logf("saved to %s", path)
	s.step(Input{Kind: EvSaved})
	return nil
}

// migrate runs QEMU's migration into w's file and waits for its end.
func migrate(ctx context.Context, mon qmp.Monitor, sender qmp.FDSender, w *savefile.Writer) error {
	if _, err := mon.Run(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": migrationBandwidth}); err != nil {
		return err
	}
	if err := sender.SendFD(ctx, saveFD, w.File()); err != nil {
		return err
	}
	if _, err := mon.Run(ctx, "migrate", map[string]any{"uri": "fd:" + saveFD}); err != nil {
		return err
	}
	return migrationDone(ctx, mon)
}

// migrationDone waits until QEMU's migration, either way, has completed or
// failed (query-migrate), at most until ctx ends.
func migrationDone(ctx context.Context, mon qmp.Monitor) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		out, err := mon.Run(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(out, &st); err != nil {
			return fmt.Errorf("query-migrate: %w", err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("QEMU's migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("QEMU's migration (%s): %w", st.Status, ctx.Err())
		case <-tick.C:
		}
	}
}

// diskIdentities are the identities of d's file-backed disks.
func diskIdentities(d *domain.Domain) ([]savefile.Disk, error) {
	var out []savefile.Disk
	for _, disk := range d.Devices.Disks {
		if disk.Source == nil || disk.Source.File == nil || disk.Source.File.File == "" {
			continue
		}
		target := ""
		if disk.Target != nil {
			target = disk.Target.Dev
		}
		id, err := savefile.DiskIdentity(target, disk.Source.File.File)
		if err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, nil
}

// restore hands QEMU, started with -incoming defer, the stream of the file
// at path (getfd, migrate-incoming fd:) and waits until it has taken it
// all; the guest's network gets its DHCP state back. It says whether the
// guest's CPUs ran when it was saved.
func (s *supervisor) restore(ctx context.Context, mon qmp.Monitor, path string) (running bool, err error) {
	sender, ok := mon.(qmp.FDSender)
	if !ok {
		return false, errors.New("restore: the QMP monitor cannot pass descriptors")
	}
	h, f, err := savefile.OpenStream(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	ctx, cancel := context.WithTimeout(ctx, saveTimeout)
	defer cancel()
	if err := sender.SendFD(ctx, restoreFD, f); err != nil {
		return false, err
	}
	if _, err := mon.Run(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + restoreFD}); err != nil {
		return false, err
	}
	if err := migrationDone(ctx, mon); err != nil {
		return false, fmt.Errorf("restoring %s: %w", path, err)
	}
	if len(h.Leases) > 0 && s.net != nil {
		var leases []usernet.Lease
		if err := json.Unmarshal(h.Leases, &leases); err != nil {
			s.logf("restore: the saved DHCP leases: %v", err)
		} else {
			s.net.RestoreLeases(leases)
		}
	}
	return h.Running, nil
}
