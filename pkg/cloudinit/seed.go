// Package cloudinit makes the NoCloud seed that first configures a guest
// booted from a cloud image (Debian genericcloud, Ubuntu cloudimg, Fedora
// Cloud): an ISO 9660 volume labelled "cidata" holding meta-data, user-data
// and, when given, network-config, attached read-only to the guest. cloud-init
// finds it by its label and reads the three files by name.
//
// The seed gives the guest one user who logs in with SSH keys only and may
// use sudo without a password, and the guest's SSH host key, made by minivirt
// (NewHostKey) so that minivirt knows it before the guest first boots
// (KnownHostsLine). The seed holds that private host key: keep the file
// private to minivirt and QEMU.
//
// The volume is written in Go (github.com/diskfs/go-diskfs), with no
// genisoimage or xorriso at run time: plain ISO 9660 names, Rock Ridge names
// (which Linux reads) and Joliet names (which Linux reads when mounted with
// norock, and other systems read), each of the three saying exactly
// meta-data, user-data and network-config.
package cloudinit

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
)

// Label is the volume label of a NoCloud seed: cloud-init looks for the
// filesystem of that label (blkid's LABEL).
const Label = "cidata"

// The names of the seed's files, as the guest reads them.
const (
	MetaDataFile      = "meta-data"
	UserDataFile      = "user-data"
	NetworkConfigFile = "network-config"
)

// DefaultShell is the login shell of the seed's user when Seed.Shell is
// empty; Debian, Ubuntu and Fedora cloud images all have it.
const DefaultShell = "/bin/bash"

// Seed is what a NoCloud seed says to the guest. The zero value is not
// valid: InstanceID, Hostname, User, at least one of AuthorizedKeys and
// HostKey are needed (Validate).
type Seed struct {
	// InstanceID is meta-data's instance-id, the domain's UUID. cloud-init
	// runs its once-per-instance steps (the user, the host keys) again
	// whenever it changes, and only then.
	InstanceID string
	// Hostname is meta-data's local-hostname, the guest's host name: the
	// domain's name, which must then be a valid host name (letters, digits
	// and hyphens in dot-separated labels of at most 63 characters).
	Hostname string
	// User is the one user made in the guest: it logs in with
	// AuthorizedKeys only (its password is locked and SSH password log-in is
	// off), may run anything with sudo without a password, and has Shell.
	User string
	// Shell is User's login shell; DefaultShell when empty.
	Shell string
	// AuthorizedKeys are User's authorized_keys lines ("ssh-ed25519 AAAA...
	// comment"), one line each, as NewSSHKey's authorized.
	AuthorizedKeys []string
	// HostKey is the guest sshd's ed25519 host key, made by NewHostKey.
	// cloud-init deletes the host keys the image came with and installs
	// this one alone, so the guest presents exactly the key that
	// HostPublicKey and KnownHostsLine give (unless UserData says
	// otherwise: see UserDataYAML).
	HostKey ed25519.PrivateKey
	// UserData is the user's own user-data, optional. See UserDataYAML for
	// how it is combined with minivirt's.
	UserData []byte
	// NetworkConfig is the network-config file, written as given (network
	// configuration version 1 or 2, YAML) when not empty; without it the
	// guest's cloud-init configures its first NIC by DHCP.
	NetworkConfig []byte
}

// File is one file of the seed: its name in the volume's root and its
// contents.
type File struct {
	Name string
	Data []byte
}

// Validate reports the first field of s that a guest could not use.
func (s Seed) Validate() error {
	if s.InstanceID == "" {
		return errors.New("seed: no instance-id")
	}
	if err := printable("instance-id", s.InstanceID); err != nil {
		return err
	}
	if err := validHostname(s.Hostname); err != nil {
		return err
	}
	if !validUser(s.User) {
		return fmt.Errorf("seed: user %q: must be 1-32 characters of a-z 0-9 _ - starting with a letter or _", s.User)
	}
	if s.User == "root" {
		return errors.New("seed: user root: give an ordinary user; it may use sudo")
	}
	if s.Shell != "" {
		if !strings.HasPrefix(s.Shell, "/") || strings.ContainsFunc(s.Shell, unicode.IsSpace) {
			return fmt.Errorf("seed: shell %q: must be an absolute path without spaces", s.Shell)
		}
		if err := printable("shell", s.Shell); err != nil {
			return err
		}
	}
	if len(s.AuthorizedKeys) == 0 {
		return fmt.Errorf("seed: user %s: no authorized key (the user has no password: it could not log in)", s.User)
	}
	for i, k := range s.AuthorizedKeys {
		if strings.ContainsAny(k, "\r\n") {
			return fmt.Errorf("seed: authorized key %d: must be one line", i+1)
		}
		if err := printable(fmt.Sprintf("authorized key %d", i+1), k); err != nil {
			return err
		}
		if _, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			return fmt.Errorf("seed: authorized key %d: %w", i+1, err)
		} else if len(rest) != 0 {
			return fmt.Errorf("seed: authorized key %d: must be one line", i+1)
		}
	}
	if _, err := HostPublicKey(s.HostKey); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	return nil
}

// validHostname accepts a host name of RFC 1123: dot-separated labels of
// letters, digits and hyphens, neither starting nor ending with a hyphen, at
// most 253 characters in all.
func validHostname(h string) error {
	if h == "" {
		return errors.New("seed: no hostname")
	}
	if len(h) > 253 {
		return fmt.Errorf("seed: hostname %q: longer than 253 characters", h)
	}
	for _, l := range strings.Split(h, ".") {
		if !validLabel(l) {
			return fmt.Errorf("seed: hostname %q: must be labels of 1-63 letters, digits and hyphens (not first or last), separated by dots", h)
		}
	}
	return nil
}

// validUser accepts what useradd accepts on Debian, Ubuntu and Fedora alike:
// 1-32 characters of a-z 0-9 _ -, not starting with a digit or hyphen.
func validUser(u string) bool {
	if u == "" || len(u) > 32 || u[0] == '-' || isDigit(u[0]) {
		return false
	}
	for i := 0; i < len(u); i++ {
		if c := u[i]; !(c >= 'a' && c <= 'z' || isDigit(c) || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validLabel accepts one label of a host name: 1-63 letters, digits and
// hyphens, the first and last not a hyphen.
func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		if c := l[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || isDigit(c) || c == '-') {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// printable refuses invalid UTF-8 and control characters.
func printable(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("seed: %s: not valid UTF-8", what)
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return fmt.Errorf("seed: %s %q: has a control character", what, s)
	}
	return nil
}

// MetaData is the meta-data file: instance-id and local-hostname. It does
// not validate s.
func (s Seed) MetaData() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "instance-id: %s\n", quote(s.InstanceID))
	fmt.Fprintf(&b, "local-hostname: %s\n", quote(s.Hostname))
	return b.Bytes()
}

// Files validates s and gives the seed's files in the order they are
// written: meta-data, user-data and, when s.NetworkConfig is not empty,
// network-config.
func (s Seed) Files() ([]File, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	ud, err := s.UserDataYAML()
	if err != nil {
		return nil, err
	}
	files := []File{{MetaDataFile, s.MetaData()}, {UserDataFile, ud}}
	if len(s.NetworkConfig) > 0 {
		files = append(files, File{NetworkConfigFile, bytes.Clone(s.NetworkConfig)})
	}
	return files, nil
}
