package manager

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/minivirt/minivirt/pkg/store"
)

// Access is how to log in to a domain's guest with ssh: `minivirt create`
// records it (SetAccess) when it makes the guest's user, key and host key,
// and `minivirt ssh` and `minivirt ssh-config` read it (Access). ssh
// reaches the guest's port 22 through `minivirt port connect`.
type Access struct {
	// User is the guest's user to log in as: 1-32 characters of A-Z a-z
	// 0-9 . _ -, not starting with "-".
	User string `json:"user"`
	// IdentityFile is the private key ssh offers, and the only one.
	IdentityFile string `json:"identity_file"`
	// KnownHostsFile holds the guest's host key under the domain's name:
	// ssh looks it up as HostKeyAlias NAME, and accepts no other key.
	KnownHostsFile string `json:"known_hosts_file"`
}

// ErrNoAccess is wrapped by Access's error for a defined domain without
// recorded access: it was not made by `minivirt create`.
var ErrNoAccess = errors.New("no ssh access recorded")

// AccessPath is where a domain's Access is kept: STATE/access/NAME.json.
func (m *Manager) AccessPath(name string) string {
	return filepath.Join(m.StateDir, "access", name+".json")
}

// Check refuses access that ssh cannot be given as written: a user outside
// the characters above, and paths that are not absolute or hold a control
// character, a double quote or a backslash (ssh_config's quoting has no
// way to write them everywhere) or "${" (ssh would read an environment
// variable there). A "%" is fine: the ssh command lines and configuration
// minivirt writes double it.
func (a Access) Check() error {
	if len(a.User) == 0 || len(a.User) > 32 || a.User[0] == '-' || strings.TrimLeft(a.User, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != "" {
		return fmt.Errorf("access: user %q: must be 1-32 characters of A-Z a-z 0-9 . _ - not starting with -", a.User)
	}
	for _, p := range []struct{ what, path string }{{"identity file", a.IdentityFile}, {"known hosts file", a.KnownHostsFile}} {
		switch {
		case !filepath.IsAbs(p.path):
			return fmt.Errorf("access: %s %q: must be an absolute path", p.what, p.path)
		case strings.ContainsFunc(p.path, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '"' || r == '\\' }):
			return fmt.Errorf("access: %s %q: holds a control character, a double quote or a backslash, which ssh's configuration cannot quote", p.what, p.path)
		case strings.Contains(p.path, "${"):
			return fmt.Errorf("access: %s %q: holds \"${\", which ssh would read as an environment variable", p.what, p.path)
		}
	}
	return nil
}

// SetAccess records how to log in to a defined domain's guest, replacing
// what was recorded; Undefine removes it. The access must pass Check; the
// files it names need not exist yet. The record is written whole or not
// at all, under the store's lock, so an Undefine at the same moment
// leaves no record behind.
func (m *Manager) SetAccess(name string, a Access) error {
	if err := a.Check(); err != nil {
		return fmt.Errorf("domain %s: %w", name, err)
	}
	data, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	return m.write(func(s *store.Store) error {
		if _, err := s.Get(name); err != nil {
			return err
		}
		// Whole or not at all: a reader sees the old record or the new.
		path := m.AccessPath(name)
		err := os.MkdirAll(filepath.Dir(path), 0o700)
		if err == nil {
			err = os.WriteFile(path+".new", append(data, '\n'), 0o600)
		}
		if err == nil {
			err = os.Rename(path+".new", path)
		}
		if err != nil {
			return fmt.Errorf("recording the access of %s: %w", name, err)
		}
		return nil
	})
}

// Access returns how to log in to a domain's guest, as SetAccess recorded
// it. A defined domain without a record fails with ErrNoAccess; a record
// that does not pass Check (changed by hand) fails, naming its file.
func (m *Manager) Access(name string) (Access, error) {
	if _, err := m.Get(name); err != nil {
		return Access{}, err
	}
	path := m.AccessPath(name)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Access{}, fmt.Errorf("domain %s: %w (it was not made by `minivirt create`)", name, ErrNoAccess)
	}
	if err != nil {
		return Access{}, fmt.Errorf("the access of %s: %w", name, err)
	}
	var a Access
	if err := json.Unmarshal(data, &a); err != nil {
		return Access{}, fmt.Errorf("%s: %w", path, err)
	}
	if err := a.Check(); err != nil {
		return Access{}, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

// removeAccess removes a domain's access record, if it has one.
func (m *Manager) removeAccess(name string) error {
	if err := os.Remove(m.AccessPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the access record of %s: %w", name, err)
	}
	return nil
}
