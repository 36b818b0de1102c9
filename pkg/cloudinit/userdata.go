package cloudinit

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
)

// UserDataMerge is the Merge-Type of minivirt's part of a user-data archive
// (see UserDataYAML): cloud-init merges it into the user's configuration,
// appending lists (minivirt's user after the user's own users) and adding
// the keys the user did not set, recursing into mappings (ssh_keys).
const UserDataMerge = "dict(no_replace,recurse_list)+list(append)+str()"

// UserDataHelp says in one sentence, for a --help text, what becomes of the
// user's own user-data.
const UserDataHelp = "Your user-data is kept whole and minivirt's user, SSH keys and host key are merged into it: " +
	"lists such as users are appended to, a setting you give yourself (ssh_pwauth, ssh_keys) keeps your value, " +
	"and user-data that is not a #cloud-config (a script, a boothook, a MIME archive) runs as cloud-init would run it alone."

// sudoRule is the seed user's sudoers rule: everything, without a password.
const sudoRule = "ALL=(ALL) NOPASSWD:ALL"

// UserDataYAML validates s and gives the user-data file.
//
// Without s.UserData it is minivirt's #cloud-config: the user (locked
// password, sudo without a password, the login shell, the authorized keys),
// ssh_pwauth false, and the host key (ssh_deletekeys true and ssh_keys with
// ed25519_private and ed25519_public, so cloud-init deletes the image's host
// keys, generates none and installs exactly this one).
//
// With s.UserData (gzip-compressed or not), UserDataHelp holds: the result is
// a MIME multipart/mixed archive, which cloud-init reads as such since it
// says "MIME-Version:" in its first 4096 bytes, of two parts in this order.
// First the user's document, byte for byte (base64-encoded, so that no byte
// is altered), as text/plain: cloud-init gives such a part the type its
// first line says, as it does a whole user-data file (a #cloud-config is
// configuration, a #! script runs, and so on). A user document that is
// itself MIME (the same "MIME-Version:" test) is nested whole instead, its
// parts handled as cloud-init would handle them alone. Then minivirt's
// #cloud-config, with Merge-Type UserDataMerge, merged into whatever
// configuration the user's parts gave. So where the user sets a key that
// minivirt sets too, the user's value stays: ssh_keys.ed25519_* of their
// own replaces the host key that minivirt knows, and ssh_deletekeys false
// keeps the image's host keys, if it has any, beside it.
func (s Seed) UserDataYAML() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	own, err := s.cloudConfig()
	if err != nil {
		return nil, err
	}
	if len(s.UserData) == 0 {
		return own, nil
	}
	user, err := gunzip(s.UserData)
	if err != nil {
		return nil, err
	}
	return archive(own, user)
}

// cloudConfig is minivirt's #cloud-config document, all in ASCII.
func (s Seed) cloudConfig() ([]byte, error) {
	shell := s.Shell
	if shell == "" {
		shell = DefaultShell
	}
	hostPub, err := HostPublicKey(s.HostKey)
	if err != nil {
		return nil, fmt.Errorf("user-data: %w", err)
	}
	hostPriv, err := MarshalPrivateKey(s.HostKey, "")
	if err != nil {
		return nil, fmt.Errorf("user-data: host key: %w", err)
	}
	var b bytes.Buffer
	b.WriteString("#cloud-config\n")
	b.WriteString("# minivirt's: the user, its SSH keys and the guest's SSH host key.\n")
	b.WriteString("users:\n")
	fmt.Fprintf(&b, "  - name: %s\n", quote(s.User))
	fmt.Fprintf(&b, "    shell: %s\n", quote(shell))
	fmt.Fprintf(&b, "    sudo: %s\n", quote(sudoRule))
	b.WriteString("    lock_passwd: true\n")
	b.WriteString("    ssh_authorized_keys:\n")
	for _, k := range s.AuthorizedKeys {
		fmt.Fprintf(&b, "      - %s\n", quote(strings.TrimSpace(k)))
	}
	b.WriteString("ssh_pwauth: false\n")
	b.WriteString("ssh_deletekeys: true\n")
	b.WriteString("ssh_keys:\n")
	b.WriteString("  ed25519_private: |\n")
	for _, line := range strings.SplitAfter(strings.TrimSuffix(string(hostPriv), "\n"), "\n") {
		b.WriteString("    " + line)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "  ed25519_public: %s\n", quote(AuthorizedKey(hostPub, "")))
	return b.Bytes(), nil
}

// quote writes s as a YAML double-quoted scalar in ASCII: '"' and '\'
// escaped, anything outside printable ASCII as \uXXXX or \UXXXXXXXX.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r >= 0x20 && r < 0x7f:
			b.WriteRune(r)
		case r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// gunzip undoes gzip compression, as cloud-init does to a whole user-data
// file before anything else; other data is given back as it is.
func gunzip(data []byte) ([]byte, error) {
	if !bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
		return data, nil
	}
	r, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("user-data: gzip: %w", err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("user-data: gzip: %w", err)
	}
	return out, nil
}

// isMIME is cloud-init's own test for a MIME user-data file.
func isMIME(data []byte) bool {
	return bytes.Contains(bytes.ToLower(data[:min(len(data), 4096)]), []byte("mime-version:"))
}

// archive is the multipart/mixed user-data of the user's document, then
// minivirt's own.
func archive(own, user []byte) ([]byte, error) {
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("user-data: MIME boundary: %w", err)
	}
	boundary := "==minivirt-" + hex.EncodeToString(nonce[:]) + "=="
	delim := "--" + boundary
	if bytes.Contains(own, []byte(delim)) || bytes.Contains(user, []byte(delim)) {
		return nil, errors.New("user-data: the MIME boundary occurs in a part; try again")
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=%q\n", boundary)
	b.WriteString("MIME-Version: 1.0\n\n")

	fmt.Fprintf(&b, "%s\n", delim)
	if isMIME(user) {
		// Its own headers make it a nested part.
		b.Write(user)
	} else {
		b.WriteString("Content-Type: text/plain; charset=\"utf-8\"\n")
		b.WriteString("MIME-Version: 1.0\n")
		b.WriteString("Content-Transfer-Encoding: base64\n")
		b.WriteString("Content-Disposition: attachment; filename=\"user-data\"\n\n")
		enc := base64.StdEncoding.EncodeToString(user)
		for len(enc) > 76 {
			b.WriteString(enc[:76] + "\n")
			enc = enc[76:]
		}
		b.WriteString(enc + "\n")
	}
	// The newline before a delimiter belongs to it, not to the part.
	fmt.Fprintf(&b, "\n%s\n", delim)
	b.WriteString("Content-Type: text/cloud-config; charset=\"us-ascii\"\n")
	b.WriteString("MIME-Version: 1.0\n")
	b.WriteString("Content-Transfer-Encoding: 7bit\n")
	b.WriteString("Content-Disposition: attachment; filename=\"minivirt.cfg\"\n")
	fmt.Fprintf(&b, "Merge-Type: %s\n\n", UserDataMerge)
	b.Write(own)
	fmt.Fprintf(&b, "\n%s--\n", delim)
	return b.Bytes(), nil
}
