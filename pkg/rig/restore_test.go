package rig_test

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/rig"
)

// TestRestore: with rig.Restore two tests' guests each go on from the save,
// with no boot of their own (no kernel banner on their consoles), each with
// its own vmchannel service, and each runs its own script.
func TestRestore(t *testing.T) {
	for _, word := range []string{"first", "second"} {
		t.Run(word, func(t *testing.T) {
			var served atomic.Int64
			vm := rig.Run(t, "minivirt-guest request 10.0.2.4:600 "+word, rig.Restore(),
				rig.Serve(600, func(c net.Conn) {
					served.Add(1)
					b, _ := io.ReadAll(c)
					c.Write(append([]byte("pong to "), b...))
					c.Close()
				}))
			vm.ExpectConsole(t, "reply: pong to "+word)
			if text := vm.ConsoleText(); strings.Contains(text, "Linux version") {
				t.Errorf("the restored guest booted:\n%s", text)
			}
			if served.Load() != 1 {
				t.Errorf("the test's own service accepted %d connections, want 1", served.Load())
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if end, err := vm.Wait(ctx); err != nil || end.Reason != "shutdown" {
				t.Errorf("the restored guest ended %+v, %v; want a clean power-off after its script", end, err)
			}
		})
	}
}

// BenchmarkRigStart times a rig guest from rig.Run to the first accept of
// its vmchannel service, booted and restored (rig.Restore), interleaved,
// and reports each median and their ratio (make bench: -benchtime 10x).
func BenchmarkRigStart(b *testing.B) {
	var booted, restored []time.Duration
	once := func(opts ...rig.Option) time.Duration {
		accepted := make(chan time.Time, 1)
		t0 := time.Now()
		vm := rig.Run(b, "minivirt-guest request 10.0.2.4:600 ping", append(opts, rig.Serve(600, func(c net.Conn) {
			select {
			case accepted <- time.Now():
			default:
			}
			io.ReadAll(c)
			c.Write([]byte("pong"))
			c.Close()
		}))...)
		defer vm.Close()
		select {
		case at := <-accepted:
			return at.Sub(t0)
		case <-time.After(2 * time.Minute):
			b.Fatal("no guest connection within 2 minutes")
			return 0
		}
	}
	once(rig.Restore()) // the save is made once, outside the figures
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		booted = append(booted, once())
		restored = append(restored, once(rig.Restore()))
	}
	med := func(ds []time.Duration) time.Duration {
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return ds[len(ds)/2]
	}
	b.ReportMetric(float64(med(booted).Milliseconds()), "booted-ms")
	b.ReportMetric(float64(med(restored).Milliseconds()), "restored-ms")
	b.ReportMetric(float64(med(restored))/float64(med(booted)), "restored/booted")
}

// TestShare: a directory of the test's is the guest's too (rig.Share): the
// guest reads the file the test wrote and writes one the test reads back.
func TestShare(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipUnlessRequired(t, "the tiny guest mounts virtiofs only, which needs root here (make test runs as root)")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "in.txt"), []byte("FROM-THE-TEST\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	vm := rig.Run(t, "mount -t virtiofs work /mnt && cat /mnt/in.txt && echo FROM-THE-GUEST > /mnt/out.txt && umount /mnt", rig.Share("work", dir))
	vm.ExpectConsole(t, "FROM-THE-TEST")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if end, err := vm.Wait(ctx); err != nil || end.Reason != "shutdown" {
		t.Fatalf("the guest ended %+v, %v", end, err)
	}
	if data, err := os.ReadFile(filepath.Join(dir, "out.txt")); err != nil || string(data) != "FROM-THE-GUEST\n" {
		t.Errorf("the guest's file: %q, %v", data, err)
	}
}
