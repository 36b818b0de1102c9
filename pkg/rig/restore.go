package rig

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/minivirt/minivirt/pkg/manager"
	"github.com/minivirt/minivirt/pkg/savefile"
)

// scriptPort is the vmchannel port a restored guest fetches its script from.
const scriptPort = 599

// saves holds, per guest, the once-per-test-binary making of its save.
var saves sync.Map // key -> func() (string, error)

// restoredBuilder returns a Builder whose Start restores g from its save
// (made first when there is none) and serves script to it on scriptPort.
func restoredBuilder(g Guest, script string) (*Builder, error) {
	g = templateGuest(g)
	key, fingerprint, err := saveKey(g)
	if err != nil {
		return nil, err
	}
	once, _ := saves.LoadOrStore(key+fingerprint, sync.OnceValues(func() (string, error) { return makeSave(g, key, fingerprint) }))
	path, err := once.(func() (string, error))()
	if err != nil {
		return nil, err
	}
	b := New(g)
	b.uuid, b.restore = uuidOf(key), path
	l, err := b.Listen(scriptPort)
	if err != nil {
		b.Close()
		return nil, err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed with the rig
			}
			go func() {
				defer c.Close()
				c.Write([]byte(script))
			}()
		}
	}()
	return b, nil
}

// templateGuest is g as it is booted once and saved: named after nothing
// of one test, fetching its script once restored, powering off after it.
func templateGuest(g Guest) Guest {
	g.Cmdline = fmt.Sprintf("console=ttyS0 %s minivirt.fetch=%s minivirt.poweroff", g.Cmdline, ChannelAddr(scriptPort))
	if g.MemoryMiB == 0 {
		g.MemoryMiB = 192
	}
	if g.VCPUs == 0 {
		g.VCPUs = 1
	}
	g.Name = "rig-restored"
	return g
}

// saveKey names a guest's save after what the guest is (its files, command
// line and sizes), and fingerprints what makes it: the files' sizes and
// times, the minivirt binary, QEMU and the save format. A save whose
// fingerprint changed is made again under the same name, so that saves do
// not pile up as binaries are rebuilt.
func saveKey(g Guest) (key, fingerprint string, err error) {
	qemu, err := exec.LookPath(manager.QEMUBinary)
	if err != nil {
		return "", "", fmt.Errorf("%s not found: install the Debian package qemu-system-x86", manager.QEMUBinary)
	}
	name, print := sha256.New(), sha256.New()
	fmt.Fprintf(name, "kernel %s\ninitrd %s\ncmdline %s\nmemory %d\nvcpus %d\n", g.Kernel, g.Initrd, g.Cmdline, g.MemoryMiB, g.VCPUs)
	fmt.Fprintf(print, "format %d\n", savefile.Version)
	for _, f := range []string{g.Kernel, g.Initrd, g.Minivirt, qemu} {
		if f == "" {
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return "", "", err
		}
		fmt.Fprintf(print, "%s %d %d\n", f, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(name.Sum(nil))[:32], hex.EncodeToString(print.Sum(nil)), nil
}

// uuidOf is the domain uuid of the guest saved under key.
func uuidOf(key string) string {
	return fmt.Sprintf("%s-%s-%s-%s-%s", key[0:8], key[8:12], key[12:16], key[16:20], key[20:32])
}

// saveDir is where saves are kept: the module's build directory, as `make`
// keeps what it builds, or the user's cache when the module is read-only.
func saveDir() (string, error) {
	dir := filepath.Join(moduleRoot(), "build", "rig")
	if err := os.MkdirAll(dir, 0o700); err == nil && writable(dir) == nil {
		return dir, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir = filepath.Join(cache, "minivirt", "rig")
	return dir, os.MkdirAll(dir, 0o700)
}

// makeSave returns the save of g, booting and saving it when there is none
// yet: once it says it is ready, before it has fetched a script.
func makeSave(g Guest, key, fingerprint string) (string, error) {
	dir, err := saveDir()
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, key+".save")
	stamp := filepath.Join(dir, key+".fingerprint")
	if was, err := os.ReadFile(stamp); err == nil && string(was) == fingerprint && savedWhole(path) {
		return path, nil
	}
	b := New(g)
	b.uuid = uuidOf(key)
	l, err := b.Listen(scriptPort)
	if err != nil {
		b.Close()
		return "", err
	}
	go func() { // nothing is served yet: the guest tries again
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := b.Start(ctx)
	if err != nil {
		b.Close()
		return "", fmt.Errorf("booting the guest to save: %w", err)
	}
	defer vm.Close()
	if _, err := vm.WaitConsole(ctx, regexp.MustCompile(`^minivirt-guest: ready`)); err != nil {
		return "", fmt.Errorf("booting the guest to save: %w", err)
	}
	os.Remove(stamp) // the save is being replaced: not the fingerprint's until written
	if err := vm.mgr.Save(ctx, vm.Name, path, manager.SaveOptions{}); err != nil {
		return "", err
	}
	return path, os.WriteFile(stamp, []byte(fingerprint), 0o600)
}

// savedWhole says whether path holds a whole save.
func savedWhole(path string) bool {
	_, f, err := savefile.Open(path)
	if err != nil {
		return false
	}
	f.Close()
	return true
}
