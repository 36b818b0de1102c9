package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/minivirt/minivirt/pkg/proc"
)

// The list records: one small record per domain, all that `minivirt list`
// reads, so that listing many domains parses neither definitions nor
// runtime JSON.
//
// A list record is derived from the index (the uuid), the autostart mark
// and the runtime record, and is rewritten in every write transaction that
// changes one of them, so it cannot disagree with them. A minivirt that
// did not keep list records may have written the store since: every write
// transaction of this one stamps the meta bucket with its transaction id,
// and a store whose last write carries no such stamp has its list records
// rebuilt by the next Open, and is read from the records they derive from
// until then.
var (
	bucketList = []byte("list")    // name -> list record (appendListRecord)
	keyListTx  = []byte("list-tx") // the id of the last write that kept the list records
)

// listFormat is the first byte of every list record: the layout that
// follows it.
const listFormat = 1

// listAutostart is the bit of a list record's flags byte that marks a
// domain for autostart.
const listAutostart = 1

// listFill is how full bbolt fills the pages of the list records when it
// splits them (its default is half): the fewer pages they take, the fewer
// a list reads. Domains defined in name order append to the last page.
const listFill = 0.9

// listStates are the states a list record holds as one byte: the index
// into listStates. Any other state is listStateText, then the string.
var listStates = [...]string{"", StateRunning, StatePaused, StateInShutdown, StateShutoff, StateCrashed}

const listStateText = 0xff

// ListRecord is one domain as its list record holds it: what list shows of
// it, and the runtime facts its state is checked against.
type ListRecord struct {
	Name, UUID string
	Autostart  bool
	// State, Reason, Accel, ID, Generation, QEMU and Supervisor are
	// those of the domain's runtime record.
	State, Reason, Accel string
	ID                   int
	Generation           uint64
	QEMU, Supervisor     proc.ID
}

// Runtime returns the runtime record as far as r holds it: without its
// detail, network, run directory and time.
func (r *ListRecord) Runtime() Runtime {
	return Runtime{State: r.State, Reason: r.Reason, Accel: r.Accel, ID: r.ID, Generation: r.Generation, QEMU: r.QEMU, Supervisor: r.Supervisor}
}

// appendListRecord appends the list record of a domain to dst: a binary
// layout read in one pass, some 50 bytes for a domain that never ran. It
// is the format byte; the flags byte; the uuid as a string; the state as
// a byte (see listStates); reason and accel as strings; id and generation
// as uvarints; QEMU's and the supervisor's process ids, each a uvarint
// pid, a uvarint start time and a boot id string. A string is its uvarint
// length, then its bytes.
func appendListRecord(dst, uuid []byte, autostart bool, rt *Runtime) []byte {
	var flags byte
	if autostart {
		flags |= listAutostart
	}
	dst = append(dst, listFormat, flags)
	dst = appendBytes(dst, uuid)
	if code := slices.Index(listStates[:], rt.State); code >= 0 {
		dst = append(dst, byte(code))
	} else {
		dst = appendString(append(dst, listStateText), rt.State)
	}
	dst = appendString(dst, rt.Reason)
	dst = appendString(dst, rt.Accel)
	dst = binary.AppendUvarint(dst, uint64(rt.ID))
	dst = binary.AppendUvarint(dst, rt.Generation)
	for _, id := range [2]proc.ID{rt.QEMU, rt.Supervisor} {
		dst = binary.AppendUvarint(dst, uint64(id.PID))
		dst = binary.AppendUvarint(dst, id.StartTime)
		dst = appendString(dst, id.BootID)
	}
	return dst
}

func appendBytes(dst, b []byte) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(b))), b...)
}

func appendString(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

// decoder reads what appendListRecord wrote, from a string, so that what
// it returns are substrings: nothing is copied or allocated. bad is set,
// and the rest reads as zeros, once the input is cut short.
type decoder struct {
	s   string
	bad bool
}

func (d *decoder) uvarint() uint64 {
	if len(d.s) > 0 && d.s[0] < 0x80 { // most are
		v := d.s[0]
		d.s = d.s[1:]
		return uint64(v)
	}
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		if len(d.s) == 0 {
			break
		}
		c := d.s[0]
		d.s = d.s[1:]
		v |= uint64(c&0x7f) << shift
		if c < 0x80 {
			return v
		}
	}
	d.bad = true
	return 0
}

func (d *decoder) str() string {
	n := d.uvarint()
	if n > uint64(len(d.s)) {
		d.bad = true
		return ""
	}
	s := d.s[:n]
	d.s = d.s[n:]
	return s
}

func (d *decoder) byte() byte {
	if len(d.s) == 0 {
		d.bad = true
		return 0
	}
	c := d.s[0]
	d.s = d.s[1:]
	return c
}

func (d *decoder) procID() proc.ID {
	return proc.ID{PID: int(d.uvarint()), StartTime: d.uvarint(), BootID: d.str()}
}

// decodeListRecord reads the list record v of the domain name into r.
func decodeListRecord(name, v string, r *ListRecord) error {
	d := decoder{s: v}
	if f := d.byte(); f != listFormat && !d.bad {
		return fmt.Errorf("list record of %s: format %d, not %d", name, f, listFormat)
	}
	*r = ListRecord{Name: name, Autostart: d.byte()&listAutostart != 0, UUID: d.str()}
	switch code := d.byte(); {
	case code == listStateText:
		r.State = d.str()
	case int(code) < len(listStates):
		r.State = listStates[code]
	default:
		d.bad = true
	}
	r.Reason, r.Accel = d.str(), d.str()
	r.ID, r.Generation = int(d.uvarint()), d.uvarint()
	r.QEMU, r.Supervisor = d.procID(), d.procID()
	if d.bad || d.s != "" {
		return fmt.Errorf("list record of %s: %d bytes that are not one", name, len(v))
	}
	return nil
}

// putListRecord writes the list record of name from the records it derives
// from, in tx; rt is the runtime record tx holds, or nil to read it. A name
// that is not defined has its list record removed.
func putListRecord(tx *bolt.Tx, name []byte, rt *Runtime) error {
	list := tx.Bucket(bucketList)
	uuid := tx.Bucket(bucketIndex).Get(name)
	if uuid == nil {
		return list.Delete(name)
	}
	if rt == nil {
		r, err := runtimeOf(tx.Bucket(bucketRuntime), name)
		if err != nil {
			return err
		}
		rt = &r
	}
	autostart := tx.Bucket(bucketAuto).Get(name) != nil
	list.FillPercent = listFill
	return list.Put(name, appendListRecord(nil, uuid, autostart, rt))
}

// listCurrent reports whether tx holds list records that the last write
// before it kept (see bucketList).
func listCurrent(tx *bolt.Tx) bool {
	if tx == nil || tx.Bucket(bucketList) == nil || tx.Bucket(bucketMeta) == nil {
		return false
	}
	last := tx.ID() // the last write's, in a read transaction
	if tx.Writable() {
		last-- // a write transaction's id is the one it will commit as
	}
	return bytes.Equal(tx.Bucket(bucketMeta).Get(keyListTx), listStamp(last))
}

// listStamp is what the write transaction id leaves in the meta bucket
// when it keeps the list records.
func listStamp(id int) []byte { return binary.BigEndian.AppendUint64(nil, uint64(id)) }

// stampList records, at the end of the write transaction tx, that it kept
// the list records, if they were current when it began: list records that
// were not stay so until Open rebuilds them.
func stampList(tx *bolt.Tx) error {
	if !listCurrent(tx) {
		return nil
	}
	return tx.Bucket(bucketMeta).Put(keyListTx, listStamp(tx.ID()))
}

// rebuildList writes every domain's list record afresh, in the write
// transaction tx, and stamps them current.
func rebuildList(tx *bolt.Tx) error {
	if tx.Bucket(bucketList) != nil {
		if err := tx.DeleteBucket(bucketList); err != nil {
			return err
		}
	}
	if _, err := tx.CreateBucket(bucketList); err != nil {
		return err
	}
	var names [][]byte
	tx.Bucket(bucketIndex).ForEach(func(k, _ []byte) error {
		names = append(names, bytes.Clone(k))
		return nil
	})
	for _, name := range names {
		if err := putListRecord(tx, name, nil); err != nil {
			return err
		}
	}
	return tx.Bucket(bucketMeta).Put(keyListTx, listStamp(tx.ID()))
}

// Listing is every domain's list record, sorted by name, as one read
// transaction saw them: read into one buffer, so that going through many
// domains allocates nothing per domain. Read it with Next, as a
// bufio.Scanner.
type Listing struct {
	data string // per domain: uvarint name length, name, uvarint record length, record
	n    int    // domains in data
	err  error
}

// Len is the number of domains the listing holds.
func (l *Listing) Len() int { return l.n }

// Next reads the next domain's record into r and reports whether there
// was one; at the end, or at a record that cannot be read, it returns
// false, and Err says which. The strings of r share one buffer with the
// whole listing.
func (l *Listing) Next(r *ListRecord) bool {
	if l.err != nil || l.data == "" {
		return false
	}
	d := decoder{s: l.data}
	name, v := d.str(), d.str()
	if d.bad {
		l.err = fmt.Errorf("list records: cut short after %q", name)
		return false
	}
	l.data = d.s
	if err := decodeListRecord(name, v, r); err != nil {
		l.err = err
		return false
	}
	return true
}

// Err is the error that ended Next early, if any.
func (l *Listing) Err() error { return l.err }

// Listing reads every domain's list record in one read transaction. A store
// whose list records are missing or not current (see bucketList) is
// listed from the index, autostart marks and runtime records instead, with
// the same result.
func (s *Store) Listing() (*Listing, error) {
	// A strings.Builder's String copies nothing.
	var buf strings.Builder
	var scratch []byte
	n := 0
	add := func(name, record []byte) error {
		scratch = appendBytes(appendBytes(scratch[:0], name), record)
		buf.Write(scratch)
		n++
		return nil
	}
	err := s.view(func(tx *bolt.Tx) error {
		index := bucket(tx, bucketIndex)
		switch {
		case index == nil:
			return nil
		case listCurrent(tx):
			list := tx.Bucket(bucketList)
			// One allocation: growing the buffer as it fills would
			// allocate five times what it holds.
			st := list.Stats()
			buf.Grow(st.LeafInuse + st.InlineBucketInuse)
			return list.ForEach(add)
		}
		runtime, auto := bucket(tx, bucketRuntime), bucket(tx, bucketAuto)
		var record []byte
		return index.ForEach(func(k, v []byte) error {
			rt, err := runtimeOf(runtime, k)
			if err != nil {
				return err
			}
			record = appendListRecord(record[:0], v, auto != nil && auto.Get(k) != nil, &rt)
			return add(k, record)
		})
	})
	if err != nil {
		return nil, err
	}
	// bbolt iterates keys in byte order: sorted by name.
	return &Listing{data: buf.String(), n: n}, nil
}
