package rig_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/rig"
)

// TestStartCutShort: when ctx ends while the guest starts, Start returns
// only once the supervisor it spawned is gone, so that removing the rig's
// directory afterwards never pulls it from under a running QEMU.
func TestStartCutShort(t *testing.T) {
	name := "cut-" + time.Now().Format("150405.000000")
	b := rig.New(rig.Guest{
		Name:   name,
		Kernel: filepath.Join(guestDir, "vmlinuz"),
		Initrd: filepath.Join(guestDir, "initrd.gz"),
	})
	defer b.Close()
	// Ends after the spawn, before QEMU's CPUs run.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	vm, err := b.Start(ctx)
	if err == nil {
		vm.Close()
		t.Skip("the guest started within 20ms: nothing was cut short")
	}
	if pids := testenv.Processes(testenv.Mentioning("guest=" + name)); len(pids) != 0 {
		t.Errorf("Start returned (%v) while its QEMU still runs: pids %v", err, pids)
	}
}
