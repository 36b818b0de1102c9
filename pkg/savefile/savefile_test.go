package savefile

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// save writes a file with stream as its stream, as QEMU would.
func save(t *testing.T, path string, h Header, stream []byte) {
	t.Helper()
	w, err := Create(path, h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.File().Write(stream); err != nil {
		t.Fatal(err)
	}
	if err := w.Seal(h); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	os.WriteFile(disk, []byte("disk"), 0o600)
	id, err := DiskIdentity("vda", disk)
	if err != nil {
		t.Fatal(err)
	}
	h := Header{XML: "<domain/>", Running: true, Disks: []Disk{id}, Saved: time.Now().UTC()}
	path := filepath.Join(dir, "guest.save")
	stream := bytes.Repeat([]byte("QEVM"), 100000)
	save(t, path, h, stream)
	got, f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rest, _ := io.ReadAll(f)
	if got.XML != h.XML || !got.Running || !bytes.Equal(rest, stream) {
		t.Errorf("read back %+v and %d bytes of stream", got, len(rest))
	}
	if err := got.CheckDisks(); err != nil {
		t.Errorf("unchanged disk: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("files left beside the save: %v", entries)
	}
}

func TestRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "guest.save")
	save(t, path, Header{XML: "<domain/>"}, bytes.Repeat([]byte("x"), 4096))
	whole, _ := os.ReadFile(path)
	cases := []struct {
		name, want string
		data       []byte
	}{
		{"truncated", "truncated", whole[:len(whole)-100]},
		{"another program's", "not a file minivirt saved", append([]byte("LibvirtQemudSave"), whole[16:]...)},
		{"empty", "not a file minivirt saved", nil},
		{"flipped byte", "checksum does not match", append(append([]byte(nil), whole[:len(whole)-1]...), whole[len(whole)-1]^1)},
		{"newer version", "format version 2", append(append([]byte(Magic), 0, 0, 0, 2), whole[len(Magic)+4:]...)},
	}
	for _, c := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-"))
		os.WriteFile(p, c.data, 0o600)
		if _, _, err := Open(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.want)
		}
	}
}

func TestDiskChanges(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.qcow2")
	os.WriteFile(disk, []byte("disk"), 0o600)
	id, _ := DiskIdentity("vda", disk)
	h := Header{Disks: []Disk{id}}

	os.WriteFile(disk, []byte("disk, written since"), 0o600)
	if err := h.CheckDisks(); err == nil || !strings.Contains(err.Error(), "changed since") {
		t.Errorf("a written disk: %v", err)
	}
	os.Remove(disk)
	os.WriteFile(disk+".new", []byte("disk"), 0o600)
	os.Rename(disk+".new", disk)
	// The new file may get the old one's inode number back (tmpfs does):
	// then its modification time tells.
	if err := h.CheckDisks(); err == nil || !strings.Contains(err.Error(), "changed since") {
		t.Errorf("a swapped disk: %v", err)
	}
}

func TestNoStreamNoFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "guest.save")
	w, err := Create(path, Header{XML: "<domain/>"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Seal(Header{XML: "<domain/>"}); err == nil {
		t.Error("sealed a file without a stream")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a failed save left %v", entries)
	}
}
