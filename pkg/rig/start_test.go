package rig_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
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

// TestBuilderCloseAfterStart: once the guest has started, the directory
// is the VM's: a deferred Builder.Close leaves it and the guest running,
// the Builder refuses a second Start, and VM.Close removes it.
func TestBuilderCloseAfterStart(t *testing.T) {
	name := "handed-" + time.Now().Format("150405.000000")
	b := rig.New(rig.Guest{
		Name:   name,
		Kernel: filepath.Join(guestDir, "vmlinuz"),
		Initrd: filepath.Join(guestDir, "initrd.gz"),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vm, err := b.Start(ctx)
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	defer vm.Close()
	dir := filepath.Dir(vm.StateDir)
	if err := b.Close(); err != nil {
		t.Errorf("Builder.Close after Start: %v", err)
	}
	if _, err := os.Stat(vm.StateDir); err != nil {
		t.Errorf("Builder.Close after Start removed the running guest's directory: %v", err)
	}
	if pids := testenv.Processes(testenv.Mentioning("guest=" + name)); len(pids) == 0 {
		t.Error("the guest stopped when its Builder was closed")
	}
	if second, err := b.Start(ctx); err == nil || !strings.Contains(err.Error(), "started its guest already") {
		t.Errorf("a second Start of one Builder: %v", err)
		if second != nil {
			second.Close() // nothing outlives the test, even when it fails
		}
	}
	if err := vm.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("VM.Close left %s: %v", dir, err)
	}
}
