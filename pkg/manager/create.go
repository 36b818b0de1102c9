package manager

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/minivirt/minivirt/pkg/cloudinit"
	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/imagecache"
)

// CreateOptions are what `minivirt create` makes a domain from.
type CreateOptions struct {
	Name string
	// Image is a cloud image: a file, or an http(s) URL fetched once into
	// the state directory's cache (and checked against ImageSHA256 when
	// set). It is never written: the domain gets a qcow2 overlay on it.
	Image, ImageSHA256 string
	MemoryKiB          uint
	VCPUs              uint
	// DiskSize, in bytes, grows the overlay; 0 keeps the image's size.
	DiskSize uint64
	// SSHKeys are public keys (authorized_keys lines) to log in with; none:
	// minivirt makes a key pair for the domain.
	SSHKeys []string
	User    string
	// UserData and NetworkConfig are the user's own cloud-init documents.
	UserData, NetworkConfig []byte
	VMChannels              []domain.VMChannel
	Forwards                []domain.Forward
	UserNetwork, UEFI       bool
	// Progress, when set, shows a download's progress.
	Progress io.Writer
}

// created lists the files `create` made for a domain, which undefine
// removes (and nothing else): the overlay, the seed, generated keys.
type created struct {
	Files []string `json:"files"`
}

func (m *Manager) createdPath(name string) string {
	return filepath.Join(m.StateDir, "created", name+".json")
}

// diskPath is where create puts a domain's overlay and seed.
func (m *Manager) diskPath(name, suffix string) string {
	return filepath.Join(m.StateDir, "disks", name+suffix)
}

// imageInfo is what qemu-img says of an image.
type imageInfo struct {
	Format      string `json:"format"`
	VirtualSize uint64 `json:"virtual-size"`
}

// inspectImage asks qemu-img for an image's format and size: the format is
// read from the file, never guessed from its name.
func inspectImage(ctx context.Context, path string) (imageInfo, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "--output=json", path).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return imageInfo{}, fmt.Errorf("image %s: qemu-img info: %s", path, strings.TrimSpace(string(ee.Stderr)))
		}
		return imageInfo{}, fmt.Errorf("image %s: qemu-img info: %w (install qemu-utils)", path, err)
	}
	var info imageInfo
	if err := json.Unmarshal(out, &info); err != nil || info.Format == "" {
		return imageInfo{}, fmt.Errorf("image %s: qemu-img info said %q", path, bytes.TrimSpace(out))
	}
	return info, nil
}

// makeOverlay creates a qcow2 overlay at path backed by image (of format),
// of size bytes (0: the image's).
func makeOverlay(ctx context.Context, path, image, format string, size uint64) error {
	args := []string{"create", "-q", "-f", "qcow2", "-F", format, "-b", image, path}
	if size > 0 {
		args = append(args, strconv.FormatUint(size, 10))
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("making the overlay %s: %v: %s", path, err, bytes.TrimSpace(out))
	}
	return nil
}

// removeCreated removes the files create made for name, and its list;
// nothing else.
func (m *Manager) removeCreated(name string) error {
	data, err := os.ReadFile(m.createdPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var c created
	if err := json.Unmarshal(data, &c); err != nil {
		return fmt.Errorf("%s: %w", m.createdPath(name), err)
	}
	var errs []error
	for i := len(c.Files) - 1; i >= 0; i-- {
		if err := os.Remove(c.Files[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(m.createdPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// recordCreated writes the list of files create made for name.
func (m *Manager) recordCreated(name string, files []string) error {
	data, err := json.MarshalIndent(created{Files: files}, "", "  ")
	if err != nil {
		return err
	}
	path := m.createdPath(name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ImageCache is where images given by URL are kept, fetched once.
func (m *Manager) ImageCache() string { return filepath.Join(m.StateDir, "images") }

// isURL says whether an image is given by URL rather than as a file.
func isURL(s string) bool { return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") }

// CreateXML is the definition Create would make, with the paths it would
// make, for `create --print-xml`: nothing is fetched, made or defined.
func (m *Manager) CreateXML(opt CreateOptions) ([]byte, error) {
	d, err := domain.NewCloud(m.cloudSpec(opt))
	if err != nil {
		return nil, err
	}
	return d.XML()
}

func (m *Manager) cloudSpec(opt CreateOptions) domain.CloudSpec {
	return domain.CloudSpec{Name: opt.Name, MemoryKiB: opt.MemoryKiB, VCPUs: opt.VCPUs,
		Disk: m.diskPath(opt.Name, ".qcow2"), Seed: m.diskPath(opt.Name, "-seed.iso"),
		UserNetwork: opt.UserNetwork, UEFI: opt.UEFI, VMChannels: opt.VMChannels, Forwards: opt.Forwards}
}

// Create makes a domain from a cloud image and defines it: a qcow2 overlay
// on the image (which is never written), a NoCloud seed that makes the
// user with the keys and gives the guest a host key minivirt knows, a key
// pair when no key is given, and what `minivirt ssh` needs. Everything it
// makes is listed for undefine, which removes it and nothing else. A
// failed Create leaves nothing behind and defines nothing.
func (m *Manager) Create(ctx context.Context, opt CreateOptions) (d *domain.Domain, err error) {
	if _, err := m.Get(opt.Name); err == nil {
		return nil, fmt.Errorf("domain %s already exists: choose another name, or `minivirt undefine %s` first", opt.Name, opt.Name)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	// The definition first: a bad name, user or channel fails before
	// anything is fetched or made.
	if d, err = domain.NewCloud(m.cloudSpec(opt)); err != nil {
		return nil, err
	}
	if err := m.checkPathsFree(opt.Name); err != nil {
		return nil, err
	}
	image := opt.Image
	if isURL(image) {
		cache := imagecache.Cache{Dir: m.ImageCache()}
		if image, err = cache.Fetch(ctx, opt.Image, opt.ImageSHA256, opt.Progress); err != nil {
			return nil, err
		}
	} else {
		if image, err = filepath.Abs(image); err != nil {
			return nil, err
		}
		if opt.ImageSHA256 != "" {
			if err := checkSHA256(image, opt.ImageSHA256); err != nil {
				return nil, err
			}
		}
	}
	info, err := inspectImage(ctx, image)
	if err != nil {
		return nil, err
	}
	if opt.DiskSize != 0 && opt.DiskSize < info.VirtualSize {
		return nil, fmt.Errorf("--disk-size %d bytes: smaller than the image's %d; the overlay can only grow it", opt.DiskSize, info.VirtualSize)
	}

	var made []string
	defer func() {
		if err != nil {
			for i := len(made) - 1; i >= 0; i-- {
				os.Remove(made[i])
			}
		}
	}()
	overlay, seedPath := m.diskPath(opt.Name, ".qcow2"), m.diskPath(opt.Name, "-seed.iso")
	keyDir := m.keyDir(opt.Name)
	// The shared directories stay; only what is this domain's is listed.
	for _, dir := range []string{filepath.Dir(overlay), filepath.Dir(keyDir)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.Mkdir(keyDir, 0o700); err != nil {
		return nil, err
	}
	made = append(made, keyDir)
	made = append(made, overlay)
	if err := makeOverlay(ctx, overlay, image, info.Format, opt.DiskSize); err != nil {
		return nil, err
	}

	access := Access{User: opt.User, KnownHostsFile: filepath.Join(keyDir, "known_hosts")}
	keys := opt.SSHKeys
	if len(keys) == 0 {
		private, authorized, err := cloudinit.NewSSHKey(opt.Name + "@minivirt")
		if err != nil {
			return nil, err
		}
		access.IdentityFile = filepath.Join(keyDir, "id_ed25519")
		made = append(made, access.IdentityFile, access.IdentityFile+".pub")
		if err := os.WriteFile(access.IdentityFile, private, 0o600); err != nil {
			return nil, err
		}
		if err := os.WriteFile(access.IdentityFile+".pub", []byte(authorized+"\n"), 0o644); err != nil {
			return nil, err
		}
		keys = []string{authorized}
	}
	hostKey, err := cloudinit.NewHostKey()
	if err != nil {
		return nil, err
	}
	hostPub, err := cloudinit.HostPublicKey(hostKey)
	if err != nil {
		return nil, err
	}
	made = append(made, access.KnownHostsFile)
	if err := os.WriteFile(access.KnownHostsFile, []byte(cloudinit.KnownHostsLine([]string{opt.Name}, hostPub)+"\n"), 0o600); err != nil {
		return nil, err
	}
	// A domain name may hold "_", which no host name may.
	seed := cloudinit.Seed{InstanceID: d.UUID, Hostname: strings.ReplaceAll(opt.Name, "_", "-"), User: opt.User, AuthorizedKeys: keys, HostKey: hostKey,
		UserData: opt.UserData, NetworkConfig: opt.NetworkConfig}
	made = append(made, seedPath)
	if err := seed.WriteFile(seedPath); err != nil {
		return nil, err
	}
	if err := m.recordCreated(opt.Name, made); err != nil {
		return nil, err
	}
	made = append(made, m.createdPath(opt.Name))
	if _, _, err := m.Define(d); err != nil {
		return nil, err
	}
	if err := m.SetAccess(opt.Name, access); err != nil {
		m.Undefine(opt.Name)
		return nil, err
	}
	return d, nil
}

// keyDir holds the keys create made for a domain, and its known_hosts.
func (m *Manager) keyDir(name string) string { return filepath.Join(m.StateDir, "access", name) }

// checkPathsFree refuses to make a domain whose files would replace
// something already there: create never overwrites.
func (m *Manager) checkPathsFree(name string) error {
	for _, p := range []string{m.diskPath(name, ".qcow2"), m.diskPath(name, "-seed.iso"), m.keyDir(name), m.createdPath(name)} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists already; minivirt create makes it and never overwrites: move it away", p)
		}
	}
	return nil
}

// checkSHA256 compares a file's sha256 with want (hex).
func checkSHA256(path, want string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); !strings.EqualFold(got, want) {
		return fmt.Errorf("image %s: sha256 is %s, want %s", path, got, want)
	}
	return nil
}
