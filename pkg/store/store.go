// Package store keeps domain definitions and the last known runtime record of
// each domain in one bbolt file.
//
// bbolt allows one writer process at a time and holds its file lock for as
// long as the file is open, so callers open the store, do one short piece of
// work and close it again. Open waits up to a lock timeout for another
// minivirt process to finish.
//
// A database file that cannot be read as one (cut short, overwritten) is
// reported as an error wrapping ErrDamaged, never as bbolt's panic, and is
// never written to; see safely.
package store

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
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

	// buckets are those Open creates; bucketList (listing.go) it rebuilds.
	buckets = [][]byte{bucketDefs, bucketIndex, bucketUUIDs, bucketRuntime, bucketMeta, bucketAuto}
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
	file     *os.File // db's file, as bbolt opened it
	path     string
	readOnly bool
	// broken is set once bbolt has panicked: the store reports that
	// damage from then on instead of calling bbolt again.
	broken atomic.Pointer[DamagedError]
}

// Open opens (creating it when needed) the database in dir, waiting up to
// lockTimeout for another process that holds it. It writes only to
// initialise a new or empty file, to add a bucket an older minivirt did
// not keep, or to rebuild list records that are missing or were not kept
// by the last write (see Listing), and only once the file has read as
// sound: a damaged file is refused with ErrDamaged, unchanged.
func Open(dir string, lockTimeout time.Duration) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	s, err := open(filepath.Join(dir, FileName), lockTimeout, false)
	if errors.Is(err, ErrDamaged) {
		// A writable open reads the freelist page before check can look
		// at the file's length; a read-only one reads nothing past the
		// meta pages first, and so can say more plainly what is wrong.
		if r, rerr := OpenReadOnly(dir, lockTimeout); errors.Is(rerr, ErrDamaged) {
			err = rerr
		} else if rerr == nil {
			r.Close()
		}
	}
	if err != nil {
		return nil, err
	}
	complete, err := s.check()
	if err == nil && !complete {
		err = s.update(func(tx *bolt.Tx) error {
			for _, b := range buckets {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return fmt.Errorf("state database %s: bucket %s: %w", s.path, b, err)
				}
			}
			if !listCurrent(tx) {
				if err := rebuildList(tx); err != nil {
					return fmt.Errorf("state database %s: list records: %w", s.path, err)
				}
			}
			return nil
		})
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// OpenReadOnly opens the database in dir for reading only. It takes bbolt's
// shared lock, so any number of readers run together and none waits for
// another. A missing database reads as an empty one, and so does an empty
// file: a writer that died between creating the file and initialising it.
// (bbolt would initialise an empty file itself, which a read-only open
// cannot: "bad file descriptor".)
func OpenReadOnly(dir string, lockTimeout time.Duration) (*Store, error) {
	path := filepath.Join(dir, FileName)
	if info, err := os.Stat(path); errors.Is(err, os.ErrNotExist) || err == nil && info.Size() == 0 {
		return &Store{path: path, readOnly: true}, nil
	}
	s, err := open(path, lockTimeout, true)
	if err != nil {
		return nil, err
	}
	if _, err := s.check(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// open opens the bbolt file at path. A file bbolt refuses, or panics on,
// is reported as damaged, and leaves no lock held.
func open(path string, lockTimeout time.Duration, readOnly bool) (*Store, error) {
	s := &Store{path: path, readOnly: readOnly}
	opts := &bolt.Options{
		Timeout:  lockTimeout,
		ReadOnly: readOnly,
		// The file is kept so that its lock can be released (see
		// release) should bbolt panic before it returns a DB to close:
		// a writable open reads the freelist page, which a damaged file
		// may lack.
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			s.file = f
			return f, err
		},
	}
	var db *bolt.DB
	damage, err := safely(path, func() (err error) {
		db, err = bolt.Open(path, 0o600, opts)
		return err
	})
	switch {
	case damage != nil:
		release(s.file)
		return nil, damage
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("state database %s is held by another minivirt process for over %s; try again when it has finished", path, lockTimeout)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("state database %s: %w; run minivirt as the user that owns it, or use another state directory", path, err)
	case err != nil && accessError(err):
		return nil, fmt.Errorf("state database %s: %w", path, err)
	case err != nil: // bbolt refused what the file holds
		return nil, &DamagedError{Path: path, Reason: err.Error(), Err: err}
	}
	s.db = db
	return s, nil
}

// check reads, before anything else reads or writes the file, what every
// transaction relies on, and reports whether every bucket the store keeps
// is there, its list records current. The file must hold all the pages its meta page counts: bbolt
// grows the file before it commits a meta page that counts more, so only
// damage makes it shorter (a copy cut short, a full disk), and bbolt would
// read the missing pages from beyond the end of its mapping.
func (s *Store) check() (complete bool, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		info, err := s.file.Stat()
		if err != nil {
			return fmt.Errorf("state database %s: %w", s.path, err)
		}
		if info.Size() < tx.Size() {
			return &DamagedError{Path: s.path, Reason: fmt.Sprintf("it is %d bytes long, but its pages take %d: it was cut short", info.Size(), tx.Size())}
		}
		complete = listCurrent(tx)
		for _, b := range buckets { // reads the root page
			if tx.Bucket(b) == nil {
				complete = false
			}
		}
		return nil
	})
	return complete, err
}

// view runs fn in a read transaction; a store with no database yet has no
// buckets, and fn sees nil for each.
func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	if s.db == nil {
		return fn(nil)
	}
	return s.guard(func() error { return s.db.View(fn) })
}

// errReadOnly is a programming error: a write through a read-only open.
var errReadOnly = errors.New("state database opened read-only")

// update runs fn in a write transaction, and stamps the list records as
// kept (fn keeps them: see putListRecord). bbolt writes nothing until fn
// has returned, so a transaction that panics on a damaged page writes
// nothing.
func (s *Store) update(fn func(tx *bolt.Tx) error) error {
	if s.readOnly || s.db == nil {
		return errReadOnly
	}
	var fnErr error
	err := s.guard(func() error {
		return s.db.Update(func(tx *bolt.Tx) error {
			if fnErr = fn(tx); fnErr == nil {
				fnErr = stampList(tx)
			}
			return fnErr
		})
	})
	if err != nil && fnErr == nil && !errors.Is(err, ErrDamaged) {
		// fn succeeded and bbolt could not commit: a full disk, say.
		return fmt.Errorf("state database %s could not be written, nothing was saved: %w", s.path, err)
	}
	return err
}

// guard runs txn, a bbolt transaction, through safely. Once bbolt has
// panicked the store does not call it again: the panic may have left the
// DB's locks held, and the next call would wait on them for ever.
func (s *Store) guard(txn func() error) error {
	if damage := s.broken.Load(); damage != nil {
		return damage
	}
	damage, err := safely(s.path, txn)
	if damage != nil {
		s.broken.Store(damage)
		return damage
	}
	return err
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
	if s.broken.Load() != nil {
		// DB.Close would wait on the locks bbolt's panic may have left
		// held.
		err := release(s.file)
		s.file = nil
		return err
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
		var data []byte
		if err := ownCode(func() (err error) { data, err = encode(d); return err }); err != nil {
			return err
		}
		if err := tx.Bucket(bucketDefs).Put([]byte(d.Name), data); err != nil {
			return err
		}
		if err := index.Put([]byte(d.Name), []byte(d.UUID)); err != nil {
			return err
		}
		if err := uuids.Put([]byte(d.UUID), []byte(d.Name)); err != nil {
			return err
		}
		return putListRecord(tx, []byte(d.Name), nil)
	})
	return created, err
}

// encode returns d's XML as stored. What is stored must read back as it
// was written: a definition that would not is refused here, not found
// broken later.
func encode(d *domain.Domain) ([]byte, error) {
	data, err := d.XML()
	if err != nil {
		return nil, err
	}
	back, err := domain.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("domain %s: the definition would not read back (%v); nothing was stored", d.Name, err)
	}
	if again, err := back.XML(); err != nil || !bytes.Equal(again, data) {
		return nil, fmt.Errorf("domain %s: the definition does not read back as written; nothing was stored", d.Name)
	}
	return data, nil
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

// Undefine removes the definition, runtime record and list record of name.
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
		for _, b := range [][]byte{bucketDefs, bucketIndex, bucketRuntime, bucketAuto, bucketList} {
			if err := tx.Bucket(b).Delete([]byte(name)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Entry is one domain as List sees it: no XML is parsed to list domains.
// List reads every runtime record whole; Listing reads the list records
// only.
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
			e := Entry{Name: string(k), UUID: string(v)}
			e.Autostart = auto != nil && auto.Get(k) != nil
			var err error
			if e.Runtime, err = runtimeOf(rt, k); err != nil {
				return err
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
		var err error
		if on {
			err = tx.Bucket(bucketAuto).Put([]byte(name), []byte{})
		} else {
			err = tx.Bucket(bucketAuto).Delete([]byte(name))
		}
		if err != nil {
			return err
		}
		return putListRecord(tx, []byte(name), nil)
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
