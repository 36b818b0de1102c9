package store

import (
	"errors"
	"fmt"
	"strconv"

	bolt "go.etcd.io/bbolt"
)

// bucketSlots maps a domain's name to its QEMU slot: the number that picks
// the uid and gid its QEMU runs as (see supervisor.QEMUIdentity).
var bucketSlots = []byte("qemu-slots")

// ErrNoSlot is returned by QEMUSlot when every slot is taken.
var ErrNoSlot = errors.New("no free QEMU slot")

// QEMUSlot returns the slot of a domain, giving it the lowest free one
// below limit the first time: slots are kept until Undefine, so no two
// defined domains share one. usable says whether a slot may be given (its
// uid may belong to a user of the host).
func (s *Store) QEMUSlot(name string, limit int, usable func(slot int) bool) (int, error) {
	slot := -1
	err := s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketIndex).Get([]byte(name)) == nil {
			return &NotFoundError{name}
		}
		b, err := tx.CreateBucketIfNotExists(bucketSlots)
		if err != nil {
			return err
		}
		if v := b.Get([]byte(name)); v != nil {
			slot, err = strconv.Atoi(string(v))
			return err
		}
		taken := map[int]bool{}
		b.ForEach(func(_, v []byte) error {
			if n, err := strconv.Atoi(string(v)); err == nil {
				taken[n] = true
			}
			return nil
		})
		for n := 0; n < limit; n++ {
			if !taken[n] && usable(n) {
				slot = n
				return b.Put([]byte(name), []byte(strconv.Itoa(n)))
			}
		}
		return fmt.Errorf("%w: all %d are given to defined domains", ErrNoSlot, limit)
	})
	return slot, err
}

// ReleaseQEMUSlot frees the slot of a domain that is being undefined.
func (s *Store) ReleaseQEMUSlot(name string) error {
	return s.update(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketSlots); b != nil {
			return b.Delete([]byte(name))
		}
		return nil
	})
}
