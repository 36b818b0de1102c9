package manager

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/savefile"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// saveTimeout bounds a save, from the request to the domain shut off.
const saveTimeout = 11 * time.Minute

// SaveOptions are the choices of one save.
type SaveOptions struct {
	// Paused: the guest's CPUs stay stopped when it is restored (virsh
	// save --paused).
	Paused bool
}

// Save saves a running or paused domain's guest (memory and device state)
// to the file at path, as virsh save does, and shuts the domain off
// (saved). The file holds minivirt's header (magic, version, the domain as
// it ran, its disks' identities, its network's DHCP state) and QEMU's
// migration stream, sealed by a checksum; it appears at path only once
// whole, and a save that fails leaves the guest as it was.
func (m *Manager) Save(ctx context.Context, name, path string, opt SaveOptions) error {
	_, o, err := m.running(name)
	if err != nil {
		return err
	}
	if path, err = filepath.Abs(path); err != nil {
		return err
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || !fi.IsDir() {
		return fmt.Errorf("save %s: %s: no such directory", name, filepath.Dir(path))
	}
	ctx, cancel := context.WithTimeout(ctx, saveTimeout)
	defer cancel()
	if _, err := m.call(ctx, name, supervisor.Request{Op: supervisor.OpSave, Path: path, Paused: opt.Paused}); err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	if _, err := m.waitEnd(ctx, name, o.Generation, o.Supervisor); err != nil {
		return fmt.Errorf("save %s: the state is saved to %s, but QEMU did not end: %w", name, path, err)
	}
	return nil
}

// RestoreOptions are the choices of one restore.
type RestoreOptions struct {
	// Paused leaves the guest's CPUs stopped (virsh restore --paused);
	// they also stay stopped when the guest was saved with them stopped.
	Paused bool
	// UseDefinition runs the guest as the domain is defined (it must be,
	// with the saved uuid) rather than as the file holds it: for a caller
	// that changed only what the guest cannot see, such as the host paths
	// of vmchannels (the rig gives each test its own), as virsh restore
	// --xml does. What QEMU's devices are must not change.
	UseDefinition bool
}

// Restore starts the domain saved in the file at path from where it was:
// no boot, its vmchannels, forwards and console served by a new
// supervisor. The file must be minivirt's, whole, and its domain's disks
// unchanged since; the domain must not be running, and when it is defined
// it must be the same domain (its uuid). A domain that is not defined is
// defined from the file. Nothing is started, and nothing removed, when
// the file is refused. It returns the domain's name and the start's
// warnings.
func (m *Manager) Restore(ctx context.Context, path string, opt RestoreOptions) (string, []string, error) {
	path, err := filepath.Abs(path)
	if err != nil {
		return "", nil, err
	}
	d, err := m.checkSaved(path)
	if err != nil {
		return "", nil, err
	}
	existing, err := m.Get(d.Name)
	switch {
	case errors.Is(err, ErrNotFound) && opt.UseDefinition:
		return "", nil, fmt.Errorf("restore: %s: domain %s is not defined", path, d.Name)
	case errors.Is(err, ErrNotFound):
		if _, _, err := m.Define(d); err != nil {
			return "", nil, fmt.Errorf("restore: defining %s from %s: %w", d.Name, path, err)
		}
	case err != nil:
		return "", nil, err
	case existing.UUID != d.UUID:
		return "", nil, fmt.Errorf("restore: %s holds domain %s with uuid %s, but the domain defined as %s has uuid %s: undefine it first, or restore elsewhere", path, d.Name, d.UUID, d.Name, existing.UUID)
	}
	warnings, err := m.Start(ctx, d.Name, StartOptions{Paused: opt.Paused, Restore: path, RestoreDefinition: opt.UseDefinition})
	return d.Name, warnings, err
}

// checkSaved reads and checks a saved file for a restore: minivirt's, whole,
// its disks unchanged; it returns the domain it holds.
func (m *Manager) checkSaved(path string) (*domain.Domain, error) {
	h, f, err := savefile.Open(path)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	f.Close()
	if err := h.CheckDisks(); err != nil {
		return nil, fmt.Errorf("restore: %s: %w; it can no longer be restored", path, err)
	}
	d, err := domain.Parse(strings.NewReader(h.XML))
	if err != nil {
		return nil, fmt.Errorf("restore: %s: its domain: %w", path, err)
	}
	return d, nil
}

// savedDomain is the domain a checked save file holds, which must be
// defined's.
func savedDomain(path string, defined *domain.Domain) (*domain.Domain, error) {
	h, f, err := savefile.OpenStream(path)
	if err != nil {
		return nil, err
	}
	f.Close()
	d, err := domain.Parse(strings.NewReader(h.XML))
	if err != nil {
		return nil, fmt.Errorf("%s: its domain: %w", path, err)
	}
	if d.Name != defined.Name || d.UUID != defined.UUID {
		return nil, fmt.Errorf("%s holds domain %s (%s), not %s (%s)", path, d.Name, d.UUID, defined.Name, defined.UUID)
	}
	return d, nil
}

// ManagedSavePath is where ManagedSave keeps a domain's saved state.
func (m *Manager) ManagedSavePath(name string) string {
	return filepath.Join(m.StateDir, "save", name+".save")
}

// HasManagedSave says whether the domain has a managed save.
func (m *Manager) HasManagedSave(name string) bool {
	_, err := os.Stat(m.ManagedSavePath(name))
	return err == nil
}

// ManagedSave saves the domain's guest into minivirt's state directory
// (virsh managedsave): the next Start goes on from it instead of booting,
// and removes it once the guest runs again.
func (m *Manager) ManagedSave(ctx context.Context, name string, opt SaveOptions) error {
	if err := os.MkdirAll(filepath.Dir(m.ManagedSavePath(name)), 0o700); err != nil {
		return err
	}
	return m.Save(ctx, name, m.ManagedSavePath(name), opt)
}

// ManagedSaveRemove removes the domain's managed save: its next start
// boots. It fails for a domain that has none.
func (m *Manager) ManagedSaveRemove(name string) error {
	if _, err := m.Get(name); err != nil {
		return err
	}
	if err := os.Remove(m.ManagedSavePath(name)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("domain %s has no managed save image", name)
		}
		return err
	}
	return nil
}

// managedRestore returns the managed save a start of name goes on from,
// checked, or "" when it has none.
func (m *Manager) managedRestore(name string) (string, error) {
	path := m.ManagedSavePath(name)
	if !m.HasManagedSave(name) {
		return "", nil
	}
	if _, err := m.checkSaved(path); err != nil {
		return "", fmt.Errorf("its managed save: %w (`minivirt managedsave-remove %s` boots it instead)", err, name)
	}
	return path, nil
}
