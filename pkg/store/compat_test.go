package store

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
)

// TestFirstReleaseStore opens a store written by the first release
// (testdata/v1/minivirt.db: its examples defined, plus a vmchannel added with
// --proxy v2 --max-connections 9): every definition loads as it is, with its
// vmchannels, and stores again in today's form.
func TestFirstReleaseStore(t *testing.T) {
	data, err := os.ReadFile("testdata/v1/minivirt.db")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, FileName), data, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	entries, err := s.List()
	if err != nil || len(entries) != 3 {
		t.Fatalf("List = %+v, %v; want the 3 domains", entries, err)
	}
	want := map[string][]domain.VMChannel{
		"demo": {
			{Address: netip.MustParseAddr("10.0.2.4"), Port: 600, Path: "/tmp/minivirt-demo.sock", MaxConnections: 256},
			{Address: netip.MustParseAddr("10.0.2.4"), Port: 700, Path: "/run/x.sock", Proxy: "v2", MaxConnections: 9},
		},
		"channels": {
			{Address: netip.MustParseAddr("10.0.2.4"), Port: 600, Path: "/run/minivirt-example/api.sock", MaxConnections: 256},
			{Address: netip.MustParseAddr("10.0.2.5"), Port: 600, Path: "/run/minivirt-example/metrics.sock", Proxy: "v2", MaxConnections: 32},
			{Address: netip.MustParseAddr("10.0.2.4"), Port: 514, Path: "/run/minivirt-example/logs.sock", MaxConnections: 256},
		},
		"libvirt-style": {
			{Address: netip.MustParseAddr("10.0.2.5"), Port: 4444, Path: "/run/libvirt-style-service.sock", MaxConnections: 256},
		},
	}
	for _, e := range entries {
		d, err := s.Get(e.Name)
		if err != nil {
			t.Fatalf("%s: %v", e.Name, err)
		}
		if err := d.Validate(); err != nil {
			t.Errorf("%s: %v", e.Name, err)
		}
		if d.UUID != e.UUID {
			t.Errorf("%s: uuid %s, index says %s", e.Name, d.UUID, e.UUID)
		}
		got := d.VMChannels()
		if len(got) != len(want[e.Name]) {
			t.Fatalf("%s: vmchannels %+v; want %+v", e.Name, got, want[e.Name])
		}
		for i := range got {
			if got[i] != want[e.Name][i] {
				t.Errorf("%s: vmchannel %d = %+v; want %+v", e.Name, i, got[i], want[e.Name][i])
			}
		}
		// Stored again, in today's form, it reads back the same.
		if _, err := s.Define(d); err != nil {
			t.Fatalf("%s: redefine: %v", e.Name, err)
		}
		again, err := s.Get(e.Name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := d.XML()
		b, _ := again.XML()
		if string(a) != string(b) {
			t.Errorf("%s: stored again, it differs:\n%s\n---\n%s", e.Name, a, b)
		}
	}
}
