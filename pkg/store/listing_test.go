package store

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/minivirt/minivirt/pkg/proc"
)

// listed returns the list records of s, and fails unless s holds them
// current: a listing derived from the other records instead would agree
// with them whatever the list records said.
func listed(t *testing.T, s *Store) []ListRecord {
	t.Helper()
	current := false
	if err := s.view(func(tx *bolt.Tx) error { current = listCurrent(tx); return nil }); err != nil {
		t.Fatal(err)
	}
	if !current {
		t.Fatal("the list records are not current")
	}
	return listing(t, s)
}

func listing(t *testing.T, s *Store) []ListRecord {
	t.Helper()
	l, err := s.Listing()
	if err != nil {
		t.Fatal(err)
	}
	var out []ListRecord
	var r ListRecord
	for l.Next(&r) {
		out = append(out, r)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) != l.Len() {
		t.Errorf("Len %d, %d records", l.Len(), len(out))
	}
	return out
}

// agree fails unless the list records say what the definitions, index,
// autostart marks and runtime records say.
func agree(t *testing.T, s *Store, step string, records []ListRecord) {
	t.Helper()
	entries, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != len(entries) {
		t.Fatalf("%s: %d list records, %d domains: %+v", step, len(records), len(entries), records)
	}
	for i, e := range entries {
		r := records[i]
		d, err := s.Get(e.Name)
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		rt := e.Runtime
		want := ListRecord{Name: e.Name, UUID: d.UUID, Autostart: e.Autostart, State: rt.State, Reason: rt.Reason,
			Accel: rt.Accel, ID: rt.ID, Generation: rt.Generation, QEMU: rt.QEMU, Supervisor: rt.Supervisor}
		if r != want {
			t.Errorf("%s: list record\n%+v\nwant\n%+v", step, r, want)
		}
		if e.UUID != d.UUID {
			t.Errorf("%s: %s: index uuid %s, definition %s", step, e.Name, e.UUID, d.UUID)
		}
	}
}

// TestListRecordsAgree changes domains every way the store can and checks
// after each change that the list records agree with what they derive from.
func TestListRecordsAgree(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	self, err := proc.Self()
	if err != nil {
		t.Fatal(err)
	}
	const u = "33333333-3333-4333-8333-333333333333"
	steps := []struct {
		name string
		do   func() error
	}{
		{"define a", func() error { _, err := s.Define(parse(t, "a", "")); return err }},
		{"define b", func() error { _, err := s.Define(parse(t, "b", u)); return err }},
		{"define c", func() error { _, err := s.Define(parse(t, "c", "")); return err }},
		{"autostart b", func() error { return s.SetAutostart("b", true) }},
		{"start record b", func() error {
			return s.SetRuntime("b", Runtime{State: StatePaused, Reason: "starting up", Accel: "kvm", Generation: 7, QEMU: self, Supervisor: self, Detail: "d", RunDir: "/run/b"})
		}},
		{"running b", func() error {
			return s.UpdateRuntimeIf("b", 7, func(r *Runtime) error { r.State, r.Reason = StateRunning, "booted"; return nil })
		}},
		{"redefine b", func() error { _, err := s.Define(parse(t, "b", "")); return err }},
		{"start record c, an unknown state", func() error {
			return s.SetRuntime("c", Runtime{State: "migrating", Reason: "user", QEMU: proc.ID{PID: 1 << 30, StartTime: 1 << 40, BootID: "boot"}})
		}},
		{"stop record b", func() error {
			return s.UpdateRuntime("b", func(r *Runtime) error {
				*r = Runtime{State: StateShutoff, Reason: "destroyed", Generation: 7}
				return nil
			})
		}},
		{"autostart a, not b", func() error {
			if err := s.SetAutostart("a", true); err != nil {
				return err
			}
			return s.SetAutostart("b", false)
		}},
		{"undefine a", func() error { return s.Undefine("a") }},
		{"define a again", func() error { _, err := s.Define(parse(t, "a", "")); return err }},
		{"undefine c", func() error { return s.Undefine("c") }},
	}
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		agree(t, s, step.name, listed(t, s))
	}
	if got := listed(t, s); len(got) != 2 || got[0].Name != "a" || got[1].UUID != u || got[1].ID != 0 || got[1].Reason != "destroyed" {
		t.Errorf("at the end: %+v", got)
	}
}

// TestListRecordsRebuilt opens stores whose list records are missing or
// were not kept by the last write (a minivirt that did not keep them
// wrote it): a read-only open lists them from what they derive from, and
// Open rebuilds them.
func TestListRecordsRebuilt(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"x", "y", "z"} {
		if _, err := s.Define(parse(t, n, "")); err != nil {
			t.Fatal(err)
		}
	}
	s.SetRuntime("y", Runtime{State: StateRunning, ID: 3})
	s.SetAutostart("z", true)
	s.Close()
	path := filepath.Join(dir, FileName)
	for _, older := range []struct {
		name  string
		write func(tx *bolt.Tx) error
	}{
		{"no list records", func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketList) }},
		{"a runtime record written without them", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketRuntime).Put([]byte("x"), []byte(`{"state":"crashed","reason":"panicked"}`))
		}},
		{"a domain undefined without them", func(tx *bolt.Tx) error {
			for _, b := range [][]byte{bucketDefs, bucketIndex, bucketRuntime, bucketAuto} {
				if err := tx.Bucket(b).Delete([]byte("z")); err != nil {
					return err
				}
			}
			return nil
		}},
	} {
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(older.write); err != nil {
			t.Fatal(err)
		}
		db.Close()
		r, err := OpenReadOnly(dir, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		agree(t, r, older.name+", read-only", listing(t, r))
		r.Close()
		w, err := Open(dir, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		agree(t, w, older.name+", reopened", listed(t, w))
		w.Close()
	}
	if info, err := os.Stat(path); err != nil || info.Size() == 0 {
		t.Fatal(info, err)
	}
}

// TestListRecordDamaged reports a list record that is not one, rather than
// listing a domain wrongly.
func TestListRecordDamaged(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Define(parse(t, "a", ""))
	good := appendListRecord(nil, []byte("u"), false, &Runtime{State: StateShutoff})
	for _, bad := range [][]byte{nil, good[:len(good)-1], append(good, 0), {2}} {
		if err := s.update(func(tx *bolt.Tx) error { return tx.Bucket(bucketList).Put([]byte("a"), bad) }); err != nil {
			t.Fatal(err)
		}
		l, err := s.Listing()
		if err != nil {
			t.Fatal(err)
		}
		var r ListRecord
		if l.Next(&r) || l.Err() == nil {
			t.Errorf("record %x: listed as %+v, error %v", bad, r, l.Err())
		}
	}
}
