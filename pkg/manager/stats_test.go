package manager

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/fakeqemu"
)

// TestDomStats: a running fake domain's statistics come from QMP (vCPUs,
// balloon, disks), /proc (CPU time) and the supervisor (minivirt's own
// network's frames); once it is shut off only its state is left.
func TestDomStats(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	m, name := fakeDomain(t, "guest", `<vmchannels network='netstack'/>`,
		`<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='`+img+`'/><target dev='vda' bus='virtio'/></disk>`,
		`<memballoon model='virtio'/>`)
	ctx := deadline(t, 60*time.Second)
	payload := bytes.Repeat([]byte("stats "), 10_000)
	c, err := m.ConnectGuest(ctx, name, fakeqemu.GuestPort)
	if err != nil {
		t.Fatal(err)
	}
	if err := fakeqemu.CheckEcho(c, payload, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	s, err := m.DomStats(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != VirStateRunning || !s.Running {
		t.Errorf("state %d running %v, want 1 and running", s.State, s.Running)
	}
	if !s.HaveCPU {
		t.Error("no cpu.time for the test's own QEMU")
	}
	if len(s.VCPUs) != 1 || s.VCPUs[0].Thread == 0 || !s.VCPUs[0].HaveTime {
		t.Errorf("vCPUs = %+v, want one with a thread and a time", s.VCPUs)
	}
	if want := (BalloonStats{Current: (64 - fakeqemu.BalloonUsed) * 1024, Maximum: 64 * 1024}); s.Balloon == nil || *s.Balloon != want {
		t.Errorf("balloon = %+v, want %+v", s.Balloon, want)
	}
	rr, rb, wr, wb := fakeqemu.BlockStats(0)
	if want := (BlockStats{Name: "vda", RdReqs: rr, RdBytes: rb, WrReqs: wr, WrBytes: wb}); len(s.Blocks) != 1 || s.Blocks[0] != want {
		t.Errorf("blocks = %+v, want [%+v]", s.Blocks, want)
	}
	if len(s.Nets) != 1 {
		t.Fatalf("nets = %+v, want one", s.Nets)
	}
	n := s.Nets[0]
	if n.Name != "net0" || n.RxBytes < uint64(len(payload)) || n.TxBytes < uint64(len(payload)) || n.RxPackets == 0 || n.TxPackets == 0 {
		t.Errorf("net = %+v; want net0 with over %d bytes each way", n, len(payload))
	}
	keys := map[string]any{}
	for _, f := range s.Fields() {
		keys[f.Key] = f.Value
	}
	for k, want := range map[string]any{"state.state": 1, "vcpu.current": 1, "block.count": 1, "block.0.name": "vda", "net.count": 1, "net.0.name": "net0", "balloon.maximum": uint64(65536)} {
		if keys[k] != want {
			t.Errorf("%s = %v (%T), want %v", k, keys[k], keys[k], want)
		}
	}
	for _, k := range []string{"cpu.time", "vcpu.0.time", "balloon.current", "block.0.wr.bytes", "net.0.rx.pkts", "net.0.tx.bytes"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("no %s in %v", k, keys)
		}
	}

	if err := m.Shutdown(ctx, name, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	s, err = m.DomStats(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if f := s.Fields(); len(f) != 1 || f[0] != (StatField{"state.state", VirStateShutoff}) {
		t.Errorf("a shut off domain's stats: %v, want state.state=5 only", f)
	}
}

// TestDomStatsNoBalloon: QEMU's error reply to query-balloon leaves the
// balloon out; a domain without disks has block.count=0.
func TestDomStatsNoBalloon(t *testing.T) {
	m, name := fakeDomain(t, "normal")
	ctx := deadline(t, 30*time.Second)
	s, err := m.DomStats(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if s.Balloon != nil || len(s.Blocks) != 0 || s.Nets != nil {
		t.Errorf("balloon %+v blocks %+v nets %+v; want none", s.Balloon, s.Blocks, s.Nets)
	}
	if _, err := m.Destroy(ctx, name); err != nil {
		t.Fatal(err)
	}
}
