package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// populated returns the bytes of a real database with domains defined (some
// with runtime records and autostart marks), the size its pages take (what
// its meta page counts), and the pages holding the roots of the definitions
// and index buckets.
func populated(t *testing.T) (data []byte, used int, roots []int) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		name := fmt.Sprintf("dom%02d", i)
		if _, err := s.Define(parse(t, name, "")); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			if err := s.SetRuntime(name, Runtime{State: StateRunning, Reason: "booted"}); err != nil {
				t.Fatal(err)
			}
			if err := s.SetAutostart(name, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	db.View(func(tx *bolt.Tx) error {
		used = int(tx.Size())
		for _, b := range [][]byte{bucketDefs, bucketIndex} {
			root := int(uint64(tx.Bucket(b).Root()))
			if root == 0 {
				t.Fatalf("bucket %s is inline: the test needs it on a page of its own", b)
			}
			roots = append(roots, root)
		}
		return nil
	})
	db.Close()
	if data, err = os.ReadFile(path); err != nil {
		t.Fatal(err)
	}
	if used < 6*os.Getpagesize() {
		t.Fatalf("the database's pages take %d bytes: too few to cut short in several places", used)
	}
	return data, used, roots
}

// placed writes data as the database of a new state directory.
func placed(t *testing.T, data []byte) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, FileName)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

// wantDamaged checks that err reports path as damaged, on one line, in
// words that say what to do.
func wantDamaged(t *testing.T, what string, err error, path string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s: no error", what)
	case !errors.Is(err, ErrDamaged):
		t.Errorf("%s: %v; want an error that wraps ErrDamaged", what, err)
	case !strings.Contains(err.Error(), "state database "+path+" is damaged"),
		!strings.Contains(err.Error(), "move it away"),
		strings.Contains(err.Error(), "\n"):
		t.Errorf("%s: %q; want one line naming %s as damaged and saying what to do", what, err, path)
	}
}

// closed closes s, failing the test if that hangs: a transaction bbolt
// panicked in may have left bbolt's own locks held.
func closed(t *testing.T, s *Store) {
	t.Helper()
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung after a damaged read")
	}
}

// TestDamagedFile: a database file cut short, or replaced by random bytes,
// is refused by Open and OpenReadOnly with ErrDamaged, never a panic or a
// fault, and is left exactly as it was; the lock is not kept either.
func TestDamagedFile(t *testing.T) {
	good, used, _ := populated(t)
	page := os.Getpagesize()
	random := make([]byte, len(good))
	rand.NewChaCha8([32]byte{1}).Read(random) // the same bytes every run
	cases := []struct {
		name string
		data []byte
	}{
		{"one page", good[:page]},
		{"4097 bytes", good[:4097]},
		{"two pages", good[:2*page]},
		{"half", good[:used/2]},
		{"all but the last page", good[:used-page]},
		{"random bytes", random},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, path := placed(t, c.data)
			for _, open := range []struct {
				name string
				fn   func(string, time.Duration) (*Store, error)
			}{{"Open", Open}, {"OpenReadOnly", OpenReadOnly}} {
				s, err := open.fn(dir, time.Second)
				if err == nil {
					// Not refused at open: every read must be.
					_, err = s.List()
					wantDamaged(t, open.name+" then List", err, path)
					_, err = s.Get("dom01")
					wantDamaged(t, open.name+" then Get", err, path)
					_, err = s.GetRuntime("dom00")
					wantDamaged(t, open.name+" then GetRuntime", err, path)
					if !s.readOnly {
						_, err = s.Define(parse(t, "new", ""))
						wantDamaged(t, open.name+" then Define", err, path)
					}
					closed(t, s)
					continue
				}
				wantDamaged(t, open.name, err, path)
			}
			// The refusals released the file: a writer gets it at once,
			// and is refused for the damage, not for a held lock.
			_, err := Open(dir, 100*time.Millisecond)
			wantDamaged(t, "Open again", err, path)
			if now, _ := os.ReadFile(path); !bytes.Equal(now, c.data) {
				t.Error("the damaged file was changed")
			}
		})
	}
}

// TestDamagedPages: a file of full length whose pages the meta page counts
// but which hold zeros where the roots of the definitions and index buckets
// were opens (nothing at open reads those pages), and then every
// transaction that reads them fails with ErrDamaged instead of bbolt's
// panic. Nothing is written to the file; the store still closes, and its
// lock is released.
func TestDamagedPages(t *testing.T) {
	good, _, roots := populated(t)
	page := os.Getpagesize()
	data := bytes.Clone(good)
	for _, r := range roots {
		clear(data[r*page : (r+1)*page])
	}
	dir, path := placed(t, data)
	ops := []struct {
		name     string
		readOnly bool
		fn       func(s *Store) error
	}{
		{"List", true, func(s *Store) error { _, err := s.List(); return err }},
		{"Get", true, func(s *Store) error { _, err := s.Get("dom01"); return err }},
		{"GetRuntime", true, func(s *Store) error { _, err := s.GetRuntime("dom03"); return err }},
		{"Lookup", true, func(s *Store) error { _, err := s.Lookup("dom02"); return err }},
		{"Define", false, func(s *Store) error { _, err := s.Define(parse(t, "new", "")); return err }},
		{"Redefine", false, func(s *Store) error { _, err := s.Define(parse(t, "dom05", "")); return err }},
		{"SetRuntime", false, func(s *Store) error { return s.SetRuntime("dom04", Runtime{State: StatePaused}) }},
		{"SetAutostart", false, func(s *Store) error { return s.SetAutostart("dom04", true) }},
		{"Undefine", false, func(s *Store) error { return s.Undefine("dom06") }},
	}
	for _, op := range ops {
		opens := []func(string, time.Duration) (*Store, error){Open}
		if op.readOnly {
			opens = append(opens, OpenReadOnly)
		}
		for _, open := range opens {
			s, err := open(dir, 100*time.Millisecond)
			if err != nil {
				t.Fatalf("%s: open: %v", op.name, err)
			}
			err = op.fn(s)
			wantDamaged(t, op.name, err, path)
			// Once bbolt has panicked the store does not call it again.
			wantDamaged(t, op.name+", then List", func() error { _, err := s.List(); return err }(), path)
			closed(t, s)
		}
	}
	if now, _ := os.ReadFile(path); !bytes.Equal(now, data) {
		t.Error("the damaged file was changed")
	}
}

// TestEmptyFile: an empty file (a crash between creating the database and
// initialising it) reads as an empty database, is not written by a reader,
// and is initialised by a writer.
func TestEmptyFile(t *testing.T) {
	dir, path := placed(t, nil)
	r, err := OpenReadOnly(dir, time.Second)
	if err != nil {
		t.Fatalf("OpenReadOnly: %v", err)
	}
	if list, err := r.List(); err != nil || len(list) != 0 {
		t.Errorf("List = %v, %v; want none", list, err)
	}
	if _, err := r.Get("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get: %v; want not found", err)
	}
	if _, err := r.GetRuntime("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetRuntime: %v; want not found", err)
	}
	r.Close()
	if info, err := os.Stat(path); err != nil || info.Size() != 0 {
		t.Fatalf("a reader changed the empty file: %v, %v", info, err)
	}
	w, err := Open(dir, time.Second)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if _, err := w.Define(parse(t, "a", "")); err != nil {
		t.Errorf("Define: %v", err)
	}
	w.Close()
	r, err = OpenReadOnly(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if list, err := r.List(); err != nil || len(list) != 1 {
		t.Errorf("after Define, List = %v, %v", list, err)
	}
}

// TestCallerPanic: a panic in the caller's own code inside a transaction is
// a bug of the caller's, not damage: it reaches the caller as it was, and
// the store goes on working.
func TestCallerPanic(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer closed(t, s)
	if _, err := s.Define(parse(t, "a", "")); err != nil {
		t.Fatal(err)
	}
	got := func() (r any) {
		defer func() { r = recover() }()
		s.UpdateRuntime("a", func(*Runtime) error { panic("caller's bug") })
		return nil
	}()
	if got != "caller's bug" {
		t.Errorf("recovered %#v; want the caller's own panic", got)
	}
	if rt, err := s.GetRuntime("a"); err != nil || rt.State != StateShutoff {
		t.Errorf("after the caller's panic: %+v, %v", rt, err)
	}
	if err := s.SetRuntime("a", Runtime{State: StateRunning}); err != nil {
		t.Errorf("after the caller's panic: %v", err)
	}
}
