package cloudinit

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"
)

// writeSeed writes a seed, with a user-data of its own and a network-config,
// to a file and gives its path and files.
func writeSeed(t *testing.T) (string, []File) {
	t.Helper()
	s := testSeed(t)
	s.UserData = []byte("#!/bin/sh\necho hello\n")
	files, err := s.Files()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "seed.iso")
	if err := s.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	// user-data's MIME boundary and host key PEM differ between two
	// calls: take the files as written.
	got := readBack(t, path)
	if len(got) != len(files) {
		t.Fatalf("%d files in the volume, want %d", len(got), len(files))
	}
	for i := range files {
		if files[i].Name == UserDataFile {
			files[i].Data = got[UserDataFile]
			checkArchive(t, s, files[i].Data, s.UserData)
		}
	}
	return path, files
}

// readBack reads the volume at path with go-diskfs: its label must be
// Label, and it gives its files by name.
func readBack(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := iso9660.Read(file.New(f, true), st.Size(), 0, 2048)
	if err != nil {
		t.Fatal(err)
	}
	if l := strings.TrimRight(fsys.Label(), "\x00 "); l != Label {
		t.Errorf("label %q", l)
	}
	entries, err := fsys.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if out[e.Name()], err = fsys.ReadFile(e.Name()); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestWriteFileReadBack reads the seed back with go-diskfs's reader.
func TestWriteFileReadBack(t *testing.T) {
	path, files := writeSeed(t)
	got := readBack(t, path)
	for _, f := range files {
		if !bytes.Equal(got[f.Name], f.Data) {
			t.Errorf("%s: read back %q, want %q", f.Name, got[f.Name], f.Data)
		}
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range got {
			if !yield(n) {
				return
			}
		}
	})
	if want := []string{"meta-data", "network-config", "user-data"}; !slices.Equal(names, want) {
		t.Errorf("names %q, want %q", names, want)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600: the seed holds the host's private key", st.Mode().Perm())
	}
	size, err := volumeSize(mustOpen(t, path))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != size || size%2048 != 0 {
		t.Errorf("file of %d bytes, volume of %d: want the same, whole blocks", st.Size(), size)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %q", left)
	}
}

func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestWriteFileLeavesNoHalfFile: a seed that cannot be written leaves the
// path as it was and no temporary file.
func TestWriteFileLeavesNoHalfFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "seed.iso")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := testSeed(t)
	s.HostKey = nil
	if err := s.WriteFile(path); err == nil {
		t.Fatal("an invalid seed was written")
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Errorf("path now holds %q", b)
	}
	if err := testSeed(t).WriteFile(filepath.Join(dir, "missing", "seed.iso")); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only seed.iso", len(entries))
	}
}

// TestWriteISO: the volume written to an io.Writer is a whole volume too.
func TestWriteISO(t *testing.T) {
	var buf bytes.Buffer
	s := testSeed(t)
	if err := s.WriteISO(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "seed.iso")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	got := readBack(t, path)
	if !bytes.Equal(got[MetaDataFile], s.MetaData()) || !bytes.Equal(got[NetworkConfigFile], s.NetworkConfig) {
		t.Errorf("read back %q", got)
	}
	checkOwnConfig(t, s, got[UserDataFile])
	if buf.Len()%2048 != 0 {
		t.Errorf("%d bytes: not whole blocks", buf.Len())
	}

	// Without a network-config there is no such file.
	s.NetworkConfig = nil
	buf.Reset()
	if err := s.WriteISO(&buf); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, buf.Bytes(), 0o600)
	if got := readBack(t, path); len(got) != 2 || got[NetworkConfigFile] != nil {
		t.Errorf("without network-config: %d files", len(got))
	}
}

// tool finds a program of a Debian package, or skips the test.
func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found: install Debian's %s (apt-get install %s)", name, pkg, pkg)
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// isoinfoNames lists the root's file names as isoinfo prints them with
// the given option: -R (Rock Ridge), -J (Joliet) or none (ISO 9660).
func isoinfoNames(t *testing.T, isoinfo, path, option string) []string {
	t.Helper()
	args := []string{"-l", "-i", path}
	if option != "" {
		args = append([]string{option}, args...)
	}
	var names []string
	for _, line := range strings.Split(run(t, isoinfo, args...), "\n") {
		// "-rw-r--r--   1    0    0     74 Dec  1 2026 [     23 00]  meta-data "
		i := strings.LastIndex(line, "]")
		if i < 0 || !strings.HasPrefix(line, "-") {
			continue
		}
		names = append(names, strings.TrimSpace(line[i+1:]))
	}
	slices.Sort(names)
	return names
}

// TestISOInfo reads the seed with genisoimage's isoinfo and isovfy: the
// label, Rock Ridge and Joliet names exactly meta-data, network-config and
// user-data (no ";1"), and each file's contents by either name.
func TestISOInfo(t *testing.T) {
	isoinfo := tool(t, "isoinfo", "genisoimage")
	path, files := writeSeed(t)

	d := run(t, isoinfo, "-d", "-i", path)
	for _, want := range []string{"Volume id: cidata\n", "Logical block size is: 2048\n", "Rock Ridge signatures", "Joliet with UCS level 3 found"} {
		if !strings.Contains(d, want) {
			t.Errorf("isoinfo -d lacks %q:\n%s", want, d)
		}
	}
	want := []string{"meta-data", "network-config", "user-data"}
	for _, option := range []string{"-R", "-J"} {
		if got := isoinfoNames(t, isoinfo, path, option); !slices.Equal(got, want) {
			t.Errorf("isoinfo %s -l: names %q, want %q", option, got, want)
		}
		for _, f := range files {
			if got := run(t, isoinfo, option, "-x", "/"+f.Name, "-i", path); got != string(f.Data) {
				t.Errorf("isoinfo %s -x /%s: %q, want %q", option, f.Name, got, f.Data)
			}
		}
	}
	// The plain ISO 9660 names are level 1 ones (8.3, upper case); readers
	// that know neither extension see those.
	if got := isoinfoNames(t, isoinfo, path, ""); !slices.Equal(got, []string{"META_DAT.;1", "NETWORK_.;1", "USER_DAT.;1"}) {
		t.Errorf("ISO 9660 names %q", got)
	}
	if out := run(t, tool(t, "isovfy", "genisoimage"), "-i", path); !strings.Contains(out, "No errors found") {
		t.Errorf("isovfy:\n%s", out)
	}
}

// TestBlkid: util-linux's blkid, which cloud-init asks for the device
// labelled cidata, finds an iso9660 volume of that label.
func TestBlkid(t *testing.T) {
	blkid := tool(t, "blkid", "util-linux")
	path, _ := writeSeed(t)
	// -p probes the file itself, not blkid's cache.
	out := run(t, blkid, "-p", "-o", "export", path)
	for _, want := range []string{"\nLABEL=cidata\n", "\nTYPE=iso9660\n"} {
		if !strings.Contains("\n"+out, want) {
			t.Errorf("blkid lacks %q:\n%s", strings.TrimSpace(want), out)
		}
	}
	if out := run(t, blkid, path); !strings.Contains(out, ` LABEL="cidata" `) || !strings.Contains(out, ` TYPE="iso9660"`) {
		t.Errorf("blkid %s:\n%s", path, out)
	}
}

// TestMount loop-mounts the seed read-only, as the guest's kernel reads
// it, and compares names and contents byte for byte. It needs root and a
// kernel with isofs.
func TestMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if fs, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(fs), "\tiso9660\n") {
		t.Skip("this kernel has no iso9660 filesystem (isofs) in /proc/filesystems")
	}
	mount := tool(t, "mount", "mount")
	path, files := writeSeed(t)
	dir := t.TempDir()
	if out, err := exec.Command(mount, "-o", "loop,ro", "-t", "iso9660", path, dir).CombinedOutput(); err != nil {
		t.Skipf("mount -o loop,ro failed here (%v): %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(tool(t, "umount", "mount"), dir).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"meta-data", "network-config", "user-data"}; !slices.Equal(names, want) {
		t.Errorf("Linux sees %q, want %q", names, want)
	}
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(dir, f.Name))
		if err != nil {
			t.Error(err)
		} else if !bytes.Equal(got, f.Data) {
			t.Errorf("%s: Linux reads %q, want %q", f.Name, got, f.Data)
		}
	}
}
