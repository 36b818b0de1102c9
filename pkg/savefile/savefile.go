// Package savefile writes and reads minivirt's saved-guest files: a header
// (minivirt's magic, a format version, the domain's XML as it ran, the
// identity of each of its disks, and the guest network's DHCP leases)
// followed by QEMU's migration stream, sealed by a SHA-256 of both.
//
// The layout, all integers big-endian:
//
//	magic   [16]byte  "minivirt save\n\x00\x00"
//	version uint32    Version
//	length  uint32    of the JSON header
//	sum     [32]byte  SHA-256 of the JSON header and the stream
//	header  [length]byte
//	stream  QEMU's migration stream, to the end of the file
//
// The header is written twice: first as the save begins, padded with
// spaces, then in the same room by Seal, with the disks' identities as QEMU
// left them (JSON allows the trailing spaces). A file is written under a temporary name beside its path and renamed
// into place only once sealed: a failed save leaves nothing at the path.
package savefile

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Magic opens every file; Version is the layout's.
const (
	Magic   = "minivirt save\n\x00\x00"
	Version = 1
)

// prefix is the fixed part before the JSON header.
const prefix = len(Magic) + 4 + 4 + sha256.Size

// maxHeader bounds the JSON header read back.
const maxHeader = 16 << 20

// reserve is room left after the first header for Seal's: the disks'
// identities are taken once QEMU has flushed them, after the stream.
const reserve = 64 << 10

// Header is what minivirt keeps beside the stream.
type Header struct {
	// XML is the domain as it ran when saved, live changes included.
	XML string `json:"xml"`
	// Running says the guest's CPUs ran when it was saved: restore lets
	// them run again unless asked to keep them paused.
	Running bool `json:"running"`
	// Disks are the domain's file-backed disks as they were once the
	// guest stopped: restore refuses a file whose disks changed since.
	Disks []Disk `json:"disks,omitempty"`
	// Leases is the guest network's DHCP state, as the network keeps it.
	Leases json.RawMessage `json:"leases,omitempty"`
	Saved  time.Time       `json:"saved"`
}

// Disk is one disk's identity: its file, which inode, its size and when it
// last changed.
type Disk struct {
	Target  string    `json:"target"`
	Path    string    `json:"path"`
	Dev     uint64    `json:"dev"`
	Inode   uint64    `json:"inode"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
}

// DiskIdentity returns the identity of the disk of target dev at path.
func DiskIdentity(target, path string) (Disk, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Disk{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return Disk{}, fmt.Errorf("%s: no inode", path)
	}
	return Disk{Target: target, Path: path, Dev: uint64(st.Dev), Inode: st.Ino, Size: fi.Size(), ModTime: fi.ModTime().UTC()}, nil
}

// CheckDisks says which disk, if any, is no longer what h saved with.
func (h Header) CheckDisks() error {
	for _, d := range h.Disks {
		now, err := DiskIdentity(d.Target, d.Path)
		if err != nil {
			return fmt.Errorf("disk %s: %w", d.Target, err)
		}
		switch {
		case now.Dev != d.Dev || now.Inode != d.Inode:
			return fmt.Errorf("disk %s: %s changed since the guest was saved: it is another file (replaced)", d.Target, d.Path)
		case now.Size != d.Size || !now.ModTime.Equal(d.ModTime):
			return fmt.Errorf("disk %s: %s changed since the guest was saved (%d bytes, modified %s; saved with %d bytes, modified %s)",
				d.Target, d.Path, now.Size, now.ModTime.Format(time.RFC3339Nano), d.Size, d.ModTime.Format(time.RFC3339Nano))
		}
	}
	return nil
}

// Writer is a file being saved.
type Writer struct {
	f       *os.File
	path    string
	tmp     string
	jsonLen int64
}

// Create starts a file for path with header h, under a temporary name in
// the same directory. The returned file is positioned where the stream
// begins: the stream is written to it (QEMU writes through a copy of the
// descriptor, which shares its position), then Seal or Abort.
func Create(path string, h Header) (*Writer, error) {
	body, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	body = append(body, bytes.Repeat([]byte(" "), reserve)...)
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".partial-")
	if err != nil {
		return nil, fmt.Errorf("save file: %w", err)
	}
	w := &Writer{f: f, path: path, tmp: f.Name(), jsonLen: int64(len(body))}
	var head bytes.Buffer
	head.WriteString(Magic)
	binary.Write(&head, binary.BigEndian, uint32(Version))
	binary.Write(&head, binary.BigEndian, uint32(len(body)))
	head.Write(make([]byte, sha256.Size)) // sealed later
	head.Write(body)
	if _, err := f.Write(head.Bytes()); err != nil {
		w.Abort()
		return nil, fmt.Errorf("save file %s: %w", path, err)
	}
	return w, nil
}

// File is the file the stream goes to.
func (w *Writer) File() *os.File { return w.f }

// Seal checks that a stream follows the header, writes the final header h
// in the first one's room, then the checksum, syncs the file and renames
// it into place.
func (w *Writer) Seal(h Header) error {
	body, err := json.Marshal(h)
	if err == nil && int64(len(body)) > w.jsonLen {
		err = fmt.Errorf("the final header (%d bytes) outgrew its room (%d bytes)", len(body), w.jsonLen)
	}
	if err == nil {
		_, err = w.f.WriteAt(append(body, bytes.Repeat([]byte(" "), int(w.jsonLen)-len(body))...), int64(prefix))
	}
	if err != nil {
		w.Abort()
		return fmt.Errorf("save file %s: %w", w.path, err)
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, io.NewSectionReader(w.f, int64(prefix), 1<<62)); err != nil {
		w.Abort()
		return fmt.Errorf("save file %s: %w", w.path, err)
	}
	end, err := w.f.Seek(0, io.SeekEnd)
	if err == nil && end <= int64(prefix)+w.jsonLen {
		err = errors.New("QEMU wrote no migration stream")
	}
	if err == nil {
		_, err = w.f.WriteAt(sum.Sum(nil), int64(len(Magic)+8))
	}
	if err == nil {
		err = w.f.Sync()
	}
	if err == nil {
		err = w.f.Close()
	}
	if err == nil {
		err = os.Rename(w.tmp, w.path)
	}
	if err != nil {
		w.Abort()
		return fmt.Errorf("save file %s: %w", w.path, err)
	}
	return nil
}

// Abort removes the unfinished file.
func (w *Writer) Abort() {
	w.f.Close()
	os.Remove(w.tmp)
}

// Open reads and checks the file at path: minivirt's magic, a version it
// reads, a whole header and a checksum that matches. It returns the header
// and the file positioned where the stream begins; the caller closes it.
func Open(path string) (Header, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return Header{}, nil, err
	}
	h, err := check(f, path)
	if err != nil {
		f.Close()
		return Header{}, nil, err
	}
	return h, f, nil
}

// OpenStream is Open without the checksum, for a file Open has checked:
// it reads the header and leaves the file where the stream begins.
func OpenStream(path string) (Header, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return Header{}, nil, err
	}
	h, err := readHeader(f, path, false)
	if err != nil {
		f.Close()
		return Header{}, nil, err
	}
	return h, f, nil
}

func check(f *os.File, path string) (Header, error) { return readHeader(f, path, true) }

func readHeader(f *os.File, path string, verify bool) (Header, error) {
	var fixed [prefix]byte
	if _, err := io.ReadFull(f, fixed[:]); err != nil {
		return Header{}, fmt.Errorf("%s is not a file minivirt saved (too short: %v)", path, err)
	}
	if string(fixed[:len(Magic)]) != Magic {
		return Header{}, fmt.Errorf("%s is not a file minivirt saved (no minivirt save header)", path)
	}
	if v := binary.BigEndian.Uint32(fixed[len(Magic):]); v != Version {
		return Header{}, fmt.Errorf("%s was saved in format version %d; this minivirt reads version %d", path, v, Version)
	}
	n := binary.BigEndian.Uint32(fixed[len(Magic)+4:])
	if n > maxHeader {
		return Header{}, fmt.Errorf("%s: header of %d bytes (at most %d): the file is damaged", path, n, maxHeader)
	}
	want := fixed[len(Magic)+8:]
	sum := sha256.New()
	body := make([]byte, n)
	if _, err := io.ReadFull(f, body); err != nil {
		return Header{}, fmt.Errorf("%s is truncated (in its header): %w", path, err)
	}
	if verify {
		sum.Write(body)
		if _, err := io.Copy(sum, f); err != nil {
			return Header{}, fmt.Errorf("%s: %w", path, err)
		}
		if !bytes.Equal(sum.Sum(nil), want) {
			return Header{}, fmt.Errorf("%s is truncated or damaged: its checksum does not match", path)
		}
	}
	var h Header
	if err := json.Unmarshal(body, &h); err != nil {
		return Header{}, fmt.Errorf("%s: header: %w", path, err)
	}
	if _, err := f.Seek(int64(prefix)+int64(n), io.SeekStart); err != nil {
		return Header{}, err
	}
	return h, nil
}
