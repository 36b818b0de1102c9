package manager

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
)

// testImage makes a small qcow2 image, as a cloud image would be.
func testImage(t *testing.T) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "cloud image.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "64M").CombinedOutput(); err != nil {
		t.Skipf("qemu-img: %v: %s (install qemu-utils)", err, out)
	}
	return img
}

func sum(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return [32]byte(h.Sum(nil))
}

func newTestManager(t *testing.T) *Manager {
	dir := t.TempDir()
	return &Manager{StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"), LockTimeout: 10 * time.Second}
}

// create makes an overlay on the image (never writing it), a seed, a key
// pair and the access record, and defines the domain; undefine removes
// what create made and leaves the image.
func TestCreateAndUndefine(t *testing.T) {
	m := newTestManager(t)
	img := testImage(t)
	before := sum(t, img)
	opt := CreateOptions{Name: "web", Image: img, MemoryKiB: 1 << 20, VCPUs: 2, User: "alice", DiskSize: 128 << 20}
	d, err := m.Create(context.Background(), opt)
	if err != nil {
		t.Fatal(err)
	}
	overlay, seed := m.diskPath("web", ".qcow2"), m.diskPath("web", "-seed.iso")
	info, err := exec.Command("qemu-img", "info", "--output=json", overlay).Output()
	if err != nil || !strings.Contains(string(info), `"backing-filename": "`+img+`"`) || !strings.Contains(string(info), `"virtual-size": 134217728`) {
		t.Errorf("overlay: %v\n%s", err, info)
	}
	if out, err := exec.Command("blkid", "-o", "export", seed).Output(); err != nil || !strings.Contains(string(out), "LABEL=cidata") {
		t.Errorf("seed: %v: %s", err, out)
	}
	a, err := m.Access("web")
	if err != nil || a.User != "alice" || a.IdentityFile == "" {
		t.Fatalf("access: %+v, %v", a, err)
	}
	if kh, err := os.ReadFile(a.KnownHostsFile); err != nil || !strings.HasPrefix(string(kh), "web ssh-ed25519 ") {
		t.Errorf("known_hosts: %q, %v", kh, err)
	}
	got, err := m.Get("web")
	if err != nil || got.UUID != d.UUID || len(got.VirtioPorts()) != 1 || got.VirtioPorts()[0].Name != domain.AgentChannel {
		t.Errorf("defined: %+v, %v", got, err)
	}
	if _, err := m.Create(context.Background(), opt); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("a second create of the same name: %v", err)
	}
	if err := m.Undefine("web"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{overlay, seed, a.IdentityFile, a.KnownHostsFile, m.keyDir("web"), m.createdPath("web"), m.AccessPath("web")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("%s is left after undefine (%v)", p, err)
		}
	}
	if sum(t, img) != before {
		t.Error("the image changed")
	}
}

// A create that fails leaves nothing made and defines nothing; --print-xml
// makes nothing at all.
func TestCreateFailsCleanly(t *testing.T) {
	m := newTestManager(t)
	img := testImage(t)
	if _, err := m.Create(context.Background(), CreateOptions{Name: "small", Image: img, MemoryKiB: 1 << 20, VCPUs: 1, User: "bob", DiskSize: 1 << 20}); err == nil || !strings.Contains(err.Error(), "smaller than the image") {
		t.Errorf("a disk smaller than the image: %v", err)
	}
	if _, err := m.Create(context.Background(), CreateOptions{Name: "bad_user", Image: img, MemoryKiB: 1 << 20, VCPUs: 1, User: "root"}); err == nil {
		t.Error("a seed for root was made")
	}
	xml, err := m.CreateXML(CreateOptions{Name: "px", Image: img, MemoryKiB: 1 << 20, VCPUs: 1, User: "bob"})
	if err != nil || !strings.Contains(string(xml), "<name>px</name>") {
		t.Errorf("CreateXML: %v\n%s", err, xml)
	}
	// The state directory's own layout (the shared, empty disks and access
	// directories) may stay; nothing of the domain may.
	filepath.WalkDir(m.StateDir, func(path string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() && e.Name() != "minivirt.db" {
			t.Errorf("a failed create or --print-xml left %s", path)
		}
		return nil
	})
	if list, _ := m.List(); len(list) != 0 {
		t.Errorf("defined: %+v", list)
	}
}

// An image given by URL is fetched once into the state directory's cache,
// checked against its sha256; a wrong sum defines nothing and keeps no
// file. The server listens on loopback only.
func TestCreateFromURL(t *testing.T) {
	m := newTestManager(t)
	img := testImage(t)
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.ServeContent(w, r, "cloud.qcow2", time.Time{}, bytes.NewReader(data))
	}))
	defer srv.Close()
	url := srv.URL + "/images/cloud.qcow2"
	good := fmt.Sprintf("%x", sha256.Sum256(data))
	bad := strings.Repeat("0", 64)

	_, err = m.Create(context.Background(), CreateOptions{Name: "a", Image: url, ImageSHA256: bad, MemoryKiB: 1 << 20, VCPUs: 1, User: "bob"})
	if err == nil || !strings.Contains(err.Error(), "sha256 is "+good) {
		t.Fatalf("a wrong sum: %v", err)
	}
	if list, _ := m.List(); len(list) != 0 {
		t.Errorf("a wrong sum defined %+v", list)
	}
	filepath.WalkDir(m.ImageCache(), func(path string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() && strings.HasSuffix(path, ".qcow2") {
			t.Errorf("a wrong sum kept %s", path)
		}
		return nil
	})
	for _, name := range []string{"a", "b"} {
		if _, err := m.Create(context.Background(), CreateOptions{Name: name, Image: url, ImageSHA256: good, MemoryKiB: 1 << 20, VCPUs: 1, User: "bob"}); err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
	}
	if n := requests.Load(); n != 2 { // the refused download, then one for both domains
		t.Errorf("%d requests for the image; want 2 (the second domain uses the cache)", n)
	}
	info, _ := exec.Command("qemu-img", "info", "--output=json", m.diskPath("b", ".qcow2")).Output()
	if !strings.Contains(string(info), `"backing-filename": "`+m.ImageCache()) {
		t.Errorf("the overlay is not backed by the cached image:\n%s", info)
	}
}
