package cloudinit

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// blockSize is the ISO 9660 logical block size: 2048, as every reader expects.
const blockSize = 2048

// WriteISO validates s and writes the seed volume to w: ISO 9660 labelled
// Label, with Rock Ridge and Joliet names, holding Files. The volume is made
// and checked in a private temporary directory first (it holds the host's
// private key), so w receives only a whole, checked volume, though an error
// while copying to w can leave part of one there: to make a file, use
// WriteFile.
func (s Seed) WriteISO(w io.Writer) error {
	files, err := s.Files()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "minivirt-seed-")
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer os.RemoveAll(dir)
	f, err := os.OpenFile(filepath.Join(dir, "seed.iso"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer f.Close()
	if err := writeVolume(f, files); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if _, err := io.Copy(w, f); err != nil {
		return fmt.Errorf("seed: writing the volume: %w", err)
	}
	return nil
}

// WriteFile validates s and writes the seed volume, as WriteISO, to the file
// path, mode 0600 (it holds the host's private key). It writes a temporary
// file in path's directory, checks and syncs it, then renames it to path:
// path is never a partial volume; on an error it is left as it was.
func (s Seed) WriteFile(path string) (err error) {
	files, err := s.Files()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := writeVolume(f, files); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // the rename lasts; a failure here loses nothing already written
		d.Close()
	}
	return nil
}

// writeVolume writes into f, empty, the volume of files, then reads it back
// and compares (go-diskfs ignores some write errors).
func writeVolume(f *os.File, files []File) error {
	// go-diskfs stages the files in a workspace directory; it is made inside
	// a private one, since user-data holds the host's private key. The
	// workspace's and the files' modes become the Rock Ridge modes.
	//
	// The seeds of lima that go-diskfs's Rock Ridge broke (lima issue 3845)
	// had a root directory of more than one block, and fitting it in one
	// mended them; this root holds three small entries, one block.
	tmp, err := os.MkdirTemp("", "minivirt-seed-")
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer os.RemoveAll(tmp)
	ws := filepath.Join(tmp, Label)
	if err := os.Mkdir(ws, 0o755); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	fsys, err := iso9660.Create(file.New(f, false), 0, 0, blockSize, ws)
	if err != nil {
		return fmt.Errorf("seed: creating the volume: %w", err)
	}
	for _, fl := range files {
		h, err := fsys.OpenFile("/"+fl.Name, os.O_CREATE|os.O_RDWR)
		if err != nil {
			return fmt.Errorf("seed: %s: %w", fl.Name, err)
		}
		_, err = h.Write(fl.Data)
		if cerr := h.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("seed: %s: %w", fl.Name, err)
		}
	}
	err = fsys.Finalize(iso9660.FinalizeOptions{RockRidge: true, Joliet: true, VolumeIdentifier: Label})
	if err != nil {
		return fmt.Errorf("seed: writing the volume: %w", err)
	}
	// The file ends where the volume does, whole blocks.
	size, err := volumeSize(f)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return checkVolume(f, size, files)
}

// volumeSize reads the size of the volume in r from its primary volume
// descriptor (ECMA-119 8.4: block 16; volume space size at byte 80, logical
// block size at 128, little-endian halves).
func volumeSize(r io.ReaderAt) (int64, error) {
	pvd := make([]byte, blockSize)
	if _, err := r.ReadAt(pvd, 16*blockSize); err != nil {
		return 0, fmt.Errorf("seed: reading the primary volume descriptor: %w", err)
	}
	if pvd[0] != 1 || string(pvd[1:6]) != "CD001" {
		return 0, errors.New("seed: block 16 is not a primary volume descriptor")
	}
	blocks := binary.LittleEndian.Uint32(pvd[80:84])
	bs := binary.LittleEndian.Uint16(pvd[128:130])
	if bs != blockSize || blocks < 18 {
		return 0, fmt.Errorf("seed: primary volume descriptor: %d blocks of %d bytes", blocks, bs)
	}
	return int64(blocks) * blockSize, nil
}

// checkVolume reads the volume of size bytes in f back with go-diskfs and
// compares its label, its root's names and its files with files.
func checkVolume(f *os.File, size int64, files []File) error {
	fsys, err := iso9660.Read(file.New(f, true), size, 0, blockSize)
	if err != nil {
		return fmt.Errorf("seed: reading the volume back: %w", err)
	}
	// go-diskfs pads the identifier with NULs, genisoimage with spaces;
	// readers (blkid) trim both.
	if l := strings.TrimRight(fsys.Label(), "\x00 "); l != Label {
		return fmt.Errorf("seed: reading the volume back: label %q, not %q", l, Label)
	}
	entries, err := fsys.ReadDir(".")
	if err != nil {
		return fmt.Errorf("seed: reading the volume back: %w", err)
	}
	var got, want []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	for _, fl := range files {
		want = append(want, fl.Name)
		data, err := fsys.ReadFile(fl.Name)
		if err != nil {
			return fmt.Errorf("seed: reading the volume back: %s: %w", fl.Name, err)
		}
		if !bytes.Equal(data, fl.Data) {
			return fmt.Errorf("seed: reading the volume back: %s differs from what was written", fl.Name)
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("seed: reading the volume back: names %q, not %q", got, want)
	}
	return nil
}
