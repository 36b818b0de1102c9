package launcher

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/store"
)

// Observed is a domain's runtime record checked against the processes it
// names. A recorded pid counts only while its boot id and start time match.
type Observed struct {
	store.Runtime
	QEMUAlive, Supervised bool
	// Reconciled is set when the record claimed a QEMU that is gone and
	// Observe corrected it.
	Reconciled bool
}

// Observe reads the runtime record of d and reconciles it with the host: a
// record that claims a running domain whose QEMU and supervisor are both gone
// (killed, or a host crash) becomes "shut off (crashed)", and a runtime
// directory nobody owns is removed.
func Observe(st *store.Store, d *domain.Domain, runDir string) (Observed, error) {
	rt, err := st.GetRuntime(d.Name)
	if err != nil {
		return Observed{}, err
	}
	o := Observed{Runtime: rt}
	if !rt.Active() {
		if owner, ok := readOwner(runDir); !ok || !proc.Alive(owner) {
			removeStale(d, runDir)
		}
		return o, nil
	}
	o.QEMUAlive, o.Supervised = proc.Alive(rt.QEMU), proc.Alive(rt.Supervisor)
	if o.QEMUAlive || o.Supervised { // a live supervisor records QEMU's end itself
		return o, nil
	}
	o.Runtime = store.Runtime{State: store.StateShutoff, Reason: "crashed", Accel: rt.Accel,
		Detail: "QEMU and its supervisor were gone (killed, or the host restarted)", Since: time.Now().UTC()}
	if err := st.SetRuntime(d.Name, o.Runtime); err != nil {
		return o, err
	}
	removeStale(d, runDir)
	o.Reconciled = true
	return o, nil
}

func removeStale(d *domain.Domain, runDir string) {
	if _, err := os.Stat(runDir); err != nil {
		return
	}
	for _, p := range d.VirtioPorts() {
		removeSocket(p.Path)
	}
	os.RemoveAll(runDir)
}

// DestroyUnsupervised kills the QEMU of a domain whose supervisor is gone,
// cleans up after it and records the domain as destroyed.
func DestroyUnsupervised(ctx context.Context, st *store.Store, d *domain.Domain, o Observed, runDir string) error {
	if err := proc.Signal(o.QEMU, syscall.SIGKILL); err != nil && err != os.ErrProcessDone {
		return fmt.Errorf("killing QEMU pid %d: %w", o.QEMU.PID, err)
	}
	for proc.Alive(o.QEMU) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("QEMU pid %d did not exit after SIGKILL: %w", o.QEMU.PID, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	removeStale(d, runDir)
	return st.SetRuntime(d.Name, store.Runtime{State: store.StateShutoff, Reason: "destroyed", Accel: o.Accel, Since: time.Now().UTC()})
}

// WaitGone waits until the process id names has exited.
func WaitGone(ctx context.Context, id proc.ID) error {
	for proc.Alive(id) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
	return nil
}
