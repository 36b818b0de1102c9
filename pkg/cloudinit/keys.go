package cloudinit

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// NewSSHKey makes a new ed25519 key pair for logging in to a guest. private
// is the private key in OpenSSH's PEM format ("-----BEGIN OPENSSH PRIVATE
// KEY-----", unencrypted, what ssh -i reads; keep it mode 0600); authorized
// is its public half as one authorized_keys line without the newline,
// "ssh-ed25519 AAAA... comment" (no comment part when comment is empty).
func NewSSHKey(comment string) (private []byte, authorized string, err error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", fmt.Errorf("ssh key: %w", err)
	}
	if private, err = MarshalPrivateKey(priv, comment); err != nil {
		return nil, "", err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, "", fmt.Errorf("ssh key: %w", err)
	}
	return private, AuthorizedKey(sshPub, comment), nil
}

// NewHostKey makes a new ed25519 host key for a guest's sshd. Give it to
// Seed.HostKey, and record HostPublicKey's answer with KnownHostsLine so that
// the first connection to the guest is already verified.
func NewHostKey() (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	return priv, nil
}

// HostPublicKey is the SSH public key of the ed25519 private key key; it
// fails on a key that is not ed25519.PrivateKeySize bytes long.
func HostPublicKey(key ed25519.PrivateKey) (ssh.PublicKey, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("host key: an ed25519 private key has %d bytes, not %d", ed25519.PrivateKeySize, len(key))
	}
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	return pub, nil
}

// MarshalPrivateKey writes key in OpenSSH's PEM format, unencrypted, as
// sshd's HostKey files and ssh -i read it, with comment inside.
func MarshalPrivateKey(key ed25519.PrivateKey, comment string) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("private key: an ed25519 private key has %d bytes, not %d", ed25519.PrivateKeySize, len(key))
	}
	block, err := ssh.MarshalPrivateKey(key, comment)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}

// ParsePrivateKey reads an unencrypted ed25519 private key in OpenSSH's PEM
// format, as MarshalPrivateKey and NewSSHKey write it; any other kind of key
// is an error.
func ParsePrivateKey(pemBytes []byte) (ed25519.PrivateKey, error) {
	raw, err := ssh.ParseRawPrivateKey(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	switch k := raw.(type) {
	case ed25519.PrivateKey:
		return k, nil
	case *ed25519.PrivateKey:
		return *k, nil
	default:
		return nil, fmt.Errorf("private key: a %T, not an ed25519 key", raw)
	}
}

// AuthorizedKey is pub as one authorized_keys line, without the newline:
// "ssh-ed25519 AAAA... comment", or without the comment part when comment is
// empty.
func AuthorizedKey(pub ssh.PublicKey, comment string) string {
	line := strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(pub)), "\n")
	if comment != "" {
		line += " " + comment
	}
	return line
}

// KnownHostsLine is one known_hosts line, without the newline, saying that
// each of hosts presents pub. A host is a name or address, with or without a
// port ("127.0.0.1:2222", "vm1"): it is written as ssh looks it up, so a port
// other than 22 becomes "[127.0.0.1]:2222" (knownhosts.Normalize).
func KnownHostsLine(hosts []string, pub ssh.PublicKey) string {
	return knownhosts.Line(hosts, pub)
}
