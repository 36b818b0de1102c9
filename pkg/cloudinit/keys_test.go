package cloudinit

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestNewSSHKey(t *testing.T) {
	private, authorized, err := NewSSHKey("alice@host")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(private, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n")) {
		t.Fatalf("private key is not OpenSSH PEM:\n%s", private)
	}
	signer, err := ssh.ParsePrivateKey(private)
	if err != nil {
		t.Fatalf("ssh cannot read the private key: %v", err)
	}
	pub, comment, _, rest, err := ssh.ParseAuthorizedKey([]byte(authorized))
	if err != nil || len(rest) != 0 {
		t.Fatalf("authorized %q: %v, rest %q", authorized, err, rest)
	}
	if comment != "alice@host" || !strings.HasPrefix(authorized, "ssh-ed25519 AAAA") || strings.Contains(authorized, "\n") {
		t.Errorf("authorized = %q, want one line ssh-ed25519 AAAA... alice@host", authorized)
	}
	if !bytes.Equal(pub.Marshal(), signer.PublicKey().Marshal()) {
		t.Error("authorized key is not the private key's public half")
	}
	key, err := ParsePrivateKey(private)
	if err != nil {
		t.Fatal(err)
	}
	if hp, err := HostPublicKey(key); err != nil || !bytes.Equal(hp.Marshal(), pub.Marshal()) {
		t.Errorf("ParsePrivateKey gave another key (%v)", err)
	}
	if _, a2, _ := NewSSHKey(""); strings.Count(a2, " ") != 1 {
		t.Errorf("without a comment: %q, want two fields", a2)
	}
}

func TestParsePrivateKeyRefusesOthers(t *testing.T) {
	if _, err := ParsePrivateKey([]byte("not a key")); err == nil {
		t.Error("ParsePrivateKey accepted garbage")
	}
	if _, err := HostPublicKey(make([]byte, 12)); err == nil {
		t.Error("HostPublicKey accepted a 12-byte key")
	}
}

// TestKnownHostsLine checks the line with x/crypto's own known_hosts reader,
// as ssh would look the guest up: by name and by address with a port.
func TestKnownHostsLine(t *testing.T) {
	hostKey, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := HostPublicKey(hostKey)
	if err != nil {
		t.Fatal(err)
	}
	line := KnownHostsLine([]string{"127.0.0.1:2222", "vm1"}, pub)
	if want := "[127.0.0.1]:2222,vm1 " + AuthorizedKey(pub, ""); line != want {
		t.Errorf("line = %q, want %q", line, want)
	}
	file := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(file, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	check, err := knownhosts.New(file)
	if err != nil {
		t.Fatal(err)
	}
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 2222}
	for _, host := range []string{"127.0.0.1:2222", "vm1:22"} {
		if err := check(host, addr, pub); err != nil {
			t.Errorf("%s: the host key is refused: %v", host, err)
		}
	}
	otherKey, _ := NewHostKey()
	other, _ := HostPublicKey(otherKey)
	var ke *knownhosts.KeyError
	if err := check("127.0.0.1:2222", addr, other); !errors.As(err, &ke) || len(ke.Want) == 0 {
		t.Errorf("another key: %v, want a key mismatch", err)
	}
	if err := check("127.0.0.1:22", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}, pub); !errors.As(err, &ke) || len(ke.Want) != 0 {
		t.Errorf("another port: %v, want an unknown host", err)
	}
}
