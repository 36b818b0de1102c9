package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/minivirt/minivirt/pkg/proc"
)

// Domain states, in libvirt's words.
const (
	StateRunning    = "running"
	StatePaused     = "paused"
	StateInShutdown = "in shutdown"
	StateShutoff    = "shut off"
	StateCrashed    = "crashed"
)

// Runtime is the last known state of a domain.
type Runtime struct {
	State   string `json:"state"`
	Reason  string `json:"reason,omitempty"`
	Detail  string `json:"detail,omitempty"`
	Accel   string `json:"accel,omitempty"`
	Network string `json:"network,omitempty"`
	// NetBackend is how QEMU's NIC reaches netstack (vhost-user or
	// stream); NetFallback says why it is stream when it could not be
	// vhost-user.
	NetBackend  string    `json:"net_backend,omitempty"`
	NetFallback string    `json:"net_fallback,omitempty"`
	RunDir      string    `json:"run_dir,omitempty"`
	QEMU        proc.ID   `json:"qemu"`
	Supervisor  proc.ID   `json:"supervisor"`
	Since       time.Time `json:"since"`
	// ID is the domain's id while it runs, as virsh shows it: a number
	// the store gives each start, never reused; 0 while shut off.
	ID int `json:"id,omitempty"`
	// Generation names one start: a supervisor claims a new one before it
	// spawns QEMU, and every later write of the record compares it first,
	// so a writer that observed an older start never overwrites a newer
	// one (see UpdateRuntimeIf).
	Generation uint64 `json:"generation,omitempty"`
}

// ErrSuperseded is returned by UpdateRuntimeIf when the record no longer
// belongs to the start the writer observed.
var ErrSuperseded = errors.New("the runtime record belongs to a newer start")

// Active reports whether the record says the domain has a QEMU process.
func (r Runtime) Active() bool { return r.State != StateShutoff && r.State != "" }

// GetRuntime returns the runtime record of name; a domain never started is
// shut off.
func (s *Store) GetRuntime(name string) (Runtime, error) {
	var r Runtime
	err := s.view(func(tx *bolt.Tx) error {
		index, runtime := bucket(tx, bucketIndex), bucket(tx, bucketRuntime)
		if index == nil || runtime == nil || index.Get([]byte(name)) == nil {
			return &NotFoundError{name}
		}
		var err error
		r, err = runtimeOf(runtime, []byte(name))
		return err
	})
	if err != nil {
		return Runtime{State: StateShutoff}, err
	}
	return r, nil
}

// runtimeOf reads the runtime record of name from b, the runtime bucket
// (nil when there is none); a domain never started is shut off.
func runtimeOf(b *bolt.Bucket, name []byte) (Runtime, error) {
	r := Runtime{State: StateShutoff}
	var data []byte
	if b != nil {
		data = b.Get(name)
	}
	if data == nil {
		return r, nil
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("runtime record of %s: %w", name, err)
	}
	return r, nil
}

// SetRuntime records the runtime state of a defined domain.
func (s *Store) SetRuntime(name string, r Runtime) error {
	return s.UpdateRuntime(name, func(old *Runtime) error { *old = r; return nil })
}

// UpdateRuntimeIf is UpdateRuntime for a writer that acts on one start: the
// change is made only while the record's Generation is still gen, and
// ErrSuperseded is returned, with nothing written, otherwise.
func (s *Store) UpdateRuntimeIf(name string, gen uint64, change func(*Runtime) error) error {
	return s.UpdateRuntime(name, func(r *Runtime) error {
		if r.Generation != gen {
			return fmt.Errorf("%w (record %d, writer %d)", ErrSuperseded, r.Generation, gen)
		}
		return change(r)
	})
}

// UpdateRuntime reads, changes and writes the runtime record of name, and
// its list record, in one transaction, so that two processes cannot
// interleave.
func (s *Store) UpdateRuntime(name string, change func(*Runtime) error) error {
	return s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketIndex).Get([]byte(name)) == nil {
			return &NotFoundError{name}
		}
		b := tx.Bucket(bucketRuntime)
		r, err := runtimeOf(b, []byte(name))
		if err != nil {
			return err
		}
		old := r
		if err := ownCode(func() error { return change(&r) }); err != nil {
			return err
		}
		switch {
		case !r.Active():
			r.ID = 0
		case old.Active() && old.ID != 0 && old.Generation == r.Generation:
			r.ID = old.ID // the same run
		case r.ID == 0:
			meta := tx.Bucket(bucketMeta)
			next := 1
			if v := meta.Get(keyNextID); v != nil {
				next, _ = strconv.Atoi(string(v))
			}
			r.ID = next
			if err := meta.Put(keyNextID, []byte(strconv.Itoa(next+1))); err != nil {
				return err
			}
		}
		if r.Since.IsZero() {
			r.Since = time.Now().UTC()
		}
		data, err := json.Marshal(r)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(name), data); err != nil {
			return err
		}
		return putListRecord(tx, []byte(name), &r)
	})
}
