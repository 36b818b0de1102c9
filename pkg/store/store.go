// Package store keeps domain definitions and the last known runtime record of
// each domain in one bbolt file.
//
// bbolt allows one writer process at a time and holds its file lock for as
// long as the file is open, so callers open the store, do one short piece of
// work and close it again. Open waits up to a lock timeout for another
// minivirt process to finish.
package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/minivirt/minivirt/pkg/domain"
)

// FileName is the name of the database inside the state directory.
const FileName = "minivirt.db"

var (
	bucketDefs    = []byte("definitions") // name -> domain XML (minivirt's form)
	bucketIndex   = []byte("index")       // name -> uuid
	bucketUUIDs   = []byte("uuids")       // uuid -> name
	bucketRuntime = []byte("runtime")     // name -> Runtime as JSON
	bucketMeta    = []byte("meta")        // store-wide counters
	keyNextID     = []byte("next-id")     // the next domain id, as virsh shows it
	bucketAuto    = []byte("autostart")   // name -> "" for domains marked to start at boot
)

// ErrNotFound is returned for a domain name that is not defined.
var ErrNotFound = errors.New("domain not found")

// NotFoundError names the domain that was not found.
type NotFoundError struct{ Name string }

func (e *NotFoundError) Error() string { return fmt.Sprintf("domain %q not found", e.Name) }

// Is makes errors.Is(err, ErrNotFound) true.
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// Store is an open state database.
type Store struct {
	db       *bolt.DB // nil: opened read-only before any database existed
	path     string
	readOnly bool
}

// Open opens (creating it when needed) the database in dir, waiting up to
// lockTimeout for another process that holds it.
func Open(dir string, lockTimeout time.Duration) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("state database %s is held by another minivirt process for over %s; try again when it has finished", path, lockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDefs, bucketIndex, bucketUUIDs, bucketRuntime, bucketMeta, bucketAuto} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	return &Store{db: db, path: path}, nil
}

// OpenReadOnly opens the database in dir for reading only. It takes bbolt's
// shared lock, so any number of readers run together and none waits for
// another; a missing database reads as an empty one.
func OpenReadOnly(dir string, lockTimeout time.Duration) (*Store, error) {
	path := filepath.Join(dir, FileName)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return &Store{path: path}, nil
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout, ReadOnly: true})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("state database %s is held by another minivirt process for over %s; try again when it has finished", path, lockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	return &Store{db: db, path: path, readOnly: true}, nil
}

// view runs fn in a read transaction; a store with no database yet has no
// buckets, and fn sees nil for each.
func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	if s.db == nil {
		return fn(nil)
	}
	return s.db.View(fn)
}

// errReadOnly is a programming error: a write through a read-only open.
var errReadOnly = errors.New("state database opened read-only")

// update runs fn in a write transaction.
func (s *Store) update(fn func(tx *bolt.Tx) error) error {
	if s.readOnly || s.db == nil {
		return errReadOnly
	}
	return s.db.Update(fn)
}

// bucket returns the named bucket of tx, or nil.
func bucket(tx *bolt.Tx, name []byte) *bolt.Bucket {
	if tx == nil {
		return nil
	}
	return tx.Bucket(name)
}

// Close releases the database and its lock.
func (s *Store) Close() error {
	if s.db == nil {
		return nil
	}
	return s.db.Close()
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Define stores d, replacing any definition of the same name. A redefinition
// keeps the stored uuid when d's was generated rather than given; a given uuid
// must match the stored one, and no two domains share a uuid. On success
// d.UUID is the uuid stored. created reports a new name.
func (s *Store) Define(d *domain.Domain) (created bool, err error) {
	err = s.update(func(tx *bolt.Tx) error {
		index, uuids := tx.Bucket(bucketIndex), tx.Bucket(bucketUUIDs)
		if old := index.Get([]byte(d.Name)); old != nil {
			switch {
			case d.UUIDGenerated():
				d.UUID = string(old)
			case d.UUID != string(old):
				return fmt.Errorf("domain %s already exists with uuid %s; omit <uuid> or give that one", d.Name, old)
			}
		} else {
			created = true
		}
		if owner := uuids.Get([]byte(d.UUID)); owner != nil && string(owner) != d.Name {
			return fmt.Errorf("uuid %s is already used by domain %s", d.UUID, owner)
		}
		data, err := d.XML()
		if err != nil {
			return err
		}
		// What is stored must read back as it was written: a definition
		// that would not is refused here, not found broken later.
		back, err := domain.Parse(bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("domain %s: the definition would not read back (%v); nothing was stored", d.Name, err)
		}
		if again, err := back.XML(); err != nil || !bytes.Equal(again, data) {
			return fmt.Errorf("domain %s: the definition does not read back as written; nothing was stored", d.Name)
		}
		if err := tx.Bucket(bucketDefs).Put([]byte(d.Name), data); err != nil {
			return err
		}
		if err := index.Put([]byte(d.Name), []byte(d.UUID)); err != nil {
			return err
		}
		return uuids.Put([]byte(d.UUID), []byte(d.Name))
	})
	return created, err
}

// Get returns the stored definition of name.
func (s *Store) Get(name string) (*domain.Domain, error) {
	var data []byte
	err := s.view(func(tx *bolt.Tx) error {
		b := bucket(tx, bucketDefs)
		var v []byte
		if b != nil {
			v = b.Get([]byte(name))
		}
		if v == nil {
			return &NotFoundError{name}
		}
		data = bytes.Clone(v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	d, err := domain.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("stored definition of %s: %w", name, err)
	}
	return d, nil
}

// Undefine removes the definition and runtime record of name.
func (s *Store) Undefine(name string) error {
	return s.update(func(tx *bolt.Tx) error {
		index := tx.Bucket(bucketIndex)
		uuid := index.Get([]byte(name))
		if uuid == nil {
			return &NotFoundError{name}
		}
		if err := tx.Bucket(bucketUUIDs).Delete(uuid); err != nil {
			return err
		}
		for _, b := range [][]byte{bucketDefs, bucketIndex, bucketRuntime, bucketAuto} {
			if err := tx.Bucket(b).Delete([]byte(name)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Entry is one domain as List sees it: no XML is parsed to list domains.
type Entry struct {
	Name      string
	UUID      string
	Autostart bool
	Runtime   Runtime
}

// List returns every defined domain, sorted by name.
func (s *Store) List() ([]Entry, error) {
	var out []Entry
	err := s.view(func(tx *bolt.Tx) error {
		rt, index, auto := bucket(tx, bucketRuntime), bucket(tx, bucketIndex), bucket(tx, bucketAuto)
		if index == nil || rt == nil {
			return nil
		}
		out = make([]Entry, 0, index.Stats().KeyN) // 10,000 domains: no regrowth
		return index.ForEach(func(k, v []byte) error {
			e := Entry{Name: string(k), UUID: string(v), Runtime: Runtime{State: StateShutoff}}
			e.Autostart = auto != nil && auto.Get(k) != nil
			if data := rt.Get(k); data != nil {
				if err := json.Unmarshal(data, &e.Runtime); err != nil {
					return fmt.Errorf("runtime record of %s: %w", k, err)
				}
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err // bbolt iterates keys in byte order: sorted by name
}

// Lookup returns the name of the domain that nameOrUUID names: a name, or a
// uuid in any form libvirt accepts.
func (s *Store) Lookup(nameOrUUID string) (string, error) {
	var name string
	err := s.view(func(tx *bolt.Tx) error {
		index, uuids := bucket(tx, bucketIndex), bucket(tx, bucketUUIDs)
		if index != nil && index.Get([]byte(nameOrUUID)) != nil {
			name = nameOrUUID
			return nil
		}
		if u, err := domain.CanonicalUUID(nameOrUUID); err == nil && uuids != nil {
			if n := uuids.Get([]byte(u)); n != nil {
				name = string(n)
				return nil
			}
		}
		return &NotFoundError{nameOrUUID}
	})
	return name, err
}

// SetAutostart marks a domain to start at host boot, or clears the mark.
func (s *Store) SetAutostart(name string, on bool) error {
	return s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketIndex).Get([]byte(name)) == nil {
			return &NotFoundError{name}
		}
		if on {
			return tx.Bucket(bucketAuto).Put([]byte(name), []byte{})
		}
		return tx.Bucket(bucketAuto).Delete([]byte(name))
	})
}

// Autostart reports whether a domain is marked to start at host boot.
func (s *Store) Autostart(name string) (bool, error) {
	var on bool
	err := s.view(func(tx *bolt.Tx) error {
		if b := bucket(tx, bucketAuto); b != nil {
			on = b.Get([]byte(name)) != nil
		}
		return nil
	})
	return on, err
}
