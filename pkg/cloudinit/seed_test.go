package cloudinit

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"gopkg.in/yaml.v3"
)

// testSeed is a valid seed with new keys and a network-config.
func testSeed(t *testing.T) Seed {
	t.Helper()
	_, authorized, err := NewSSHKey("alice@host")
	if err != nil {
		t.Fatal(err)
	}
	hostKey, err := NewHostKey()
	if err != nil {
		t.Fatal(err)
	}
	return Seed{
		InstanceID:     "6f1d0c3e-8d0a-4b7e-9a52-3c1f5e2d7a90",
		Hostname:       "vm1",
		User:           "alice",
		AuthorizedKeys: []string{authorized},
		HostKey:        hostKey,
		NetworkConfig:  []byte("version: 2\nethernets:\n  id0:\n    match: {name: \"en*\"}\n    dhcp4: true\n"),
	}
}

func TestValidate(t *testing.T) {
	if err := testSeed(t).Validate(); err != nil {
		t.Fatalf("a valid seed: %v", err)
	}
	for name, change := range map[string]func(*Seed){
		"no instance-id":      func(s *Seed) { s.InstanceID = "" },
		"instance-id newline": func(s *Seed) { s.InstanceID = "a\nb" },
		"no hostname":         func(s *Seed) { s.Hostname = "" },
		"hostname underscore": func(s *Seed) { s.Hostname = "my_vm" },
		"hostname hyphen end": func(s *Seed) { s.Hostname = "vm-" },
		"hostname empty label": func(s *Seed) {
			s.Hostname = "vm..example"
		},
		"hostname long label": func(s *Seed) { s.Hostname = strings.Repeat("a", 64) },
		"no user":             func(s *Seed) { s.User = "" },
		"user root":           func(s *Seed) { s.User = "root" },
		"user upper case":     func(s *Seed) { s.User = "Alice" },
		"user digit first":    func(s *Seed) { s.User = "1alice" },
		"user too long":       func(s *Seed) { s.User = strings.Repeat("a", 33) },
		"shell relative":      func(s *Seed) { s.Shell = "bash" },
		"shell space":         func(s *Seed) { s.Shell = "/bin/ba sh" },
		"no authorized key":   func(s *Seed) { s.AuthorizedKeys = nil },
		"key not a key":       func(s *Seed) { s.AuthorizedKeys = []string{"ssh-ed25519 notbase64"} },
		"key two lines": func(s *Seed) {
			s.AuthorizedKeys = []string{s.AuthorizedKeys[0] + "\n" + s.AuthorizedKeys[0]}
		},
		"no host key":    func(s *Seed) { s.HostKey = nil },
		"short host key": func(s *Seed) { s.HostKey = s.HostKey[:32] },
	} {
		s := testSeed(t)
		change(&s)
		if err := s.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !strings.HasPrefix(err.Error(), "seed: ") {
			t.Errorf("%s: %v, want an error starting seed:", name, err)
		}
		if _, err := s.Files(); err == nil {
			t.Errorf("%s: Files accepted it", name)
		}
	}
	s := testSeed(t)
	s.Hostname, s.User, s.Shell = "vm-1.example.org", "_svc-1", "/usr/bin/zsh"
	if err := s.Validate(); err != nil {
		t.Errorf("valid names refused: %v", err)
	}
}

func TestMetaData(t *testing.T) {
	s := testSeed(t)
	want := "instance-id: \"6f1d0c3e-8d0a-4b7e-9a52-3c1f5e2d7a90\"\nlocal-hostname: \"vm1\"\n"
	if got := string(s.MetaData()); got != want {
		t.Errorf("meta-data:\n%s\nwant:\n%s", got, want)
	}
	var m map[string]string
	if err := yaml.Unmarshal(s.MetaData(), &m); err != nil || m["instance-id"] != s.InstanceID || m["local-hostname"] != "vm1" || len(m) != 2 {
		t.Errorf("meta-data reads as %v (%v)", m, err)
	}
}

// cloudConfig is what the tests read of minivirt's #cloud-config.
type cloudConfig struct {
	Users []struct {
		Name              string   `yaml:"name"`
		Shell             string   `yaml:"shell"`
		Sudo              string   `yaml:"sudo"`
		LockPasswd        *bool    `yaml:"lock_passwd"`
		SSHAuthorizedKeys []string `yaml:"ssh_authorized_keys"`
	} `yaml:"users"`
	SSHPwauth     *bool             `yaml:"ssh_pwauth"`
	SSHDeleteKeys *bool             `yaml:"ssh_deletekeys"`
	SSHKeys       map[string]string `yaml:"ssh_keys"`
}

// checkOwnConfig checks that doc is minivirt's #cloud-config for s.
func checkOwnConfig(t *testing.T, s Seed, doc []byte) {
	t.Helper()
	if !bytes.HasPrefix(doc, []byte("#cloud-config\n")) {
		t.Fatalf("does not start with #cloud-config:\n%s", doc)
	}
	for i, c := range doc {
		if c > 0x7e || c < 0x20 && c != '\n' {
			t.Fatalf("byte %d is %#x: minivirt's part must be printable ASCII", i, c)
		}
	}
	var cc cloudConfig
	if err := yaml.Unmarshal(doc, &cc); err != nil {
		t.Fatalf("not YAML: %v\n%s", err, doc)
	}
	shell := s.Shell
	if shell == "" {
		shell = DefaultShell
	}
	if len(cc.Users) != 1 {
		t.Fatalf("users: %d, want 1", len(cc.Users))
	}
	u := cc.Users[0]
	if u.Name != s.User || u.Shell != shell || u.Sudo != "ALL=(ALL) NOPASSWD:ALL" || u.LockPasswd == nil || !*u.LockPasswd {
		t.Errorf("user = %+v", u)
	}
	if strings.Join(u.SSHAuthorizedKeys, "\n") != strings.Join(s.AuthorizedKeys, "\n") {
		t.Errorf("authorized keys = %q, want %q", u.SSHAuthorizedKeys, s.AuthorizedKeys)
	}
	if cc.SSHPwauth == nil || *cc.SSHPwauth {
		t.Error("ssh_pwauth is not false")
	}
	if cc.SSHDeleteKeys == nil || !*cc.SSHDeleteKeys {
		t.Error("ssh_deletekeys is not true")
	}
	if len(cc.SSHKeys) != 2 {
		t.Errorf("ssh_keys has %d keys, want ed25519_private and ed25519_public", len(cc.SSHKeys))
	}
	hostPub, err := HostPublicKey(s.HostKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey([]byte(cc.SSHKeys["ed25519_private"]))
	if err != nil {
		t.Fatalf("ed25519_private: %v", err)
	}
	if !bytes.Equal(signer.PublicKey().Marshal(), hostPub.Marshal()) {
		t.Error("ed25519_private is not the seed's host key")
	}
	if !strings.HasSuffix(cc.SSHKeys["ed25519_private"], "-----END OPENSSH PRIVATE KEY-----\n") {
		t.Error("ed25519_private does not end with its END line and a newline")
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(cc.SSHKeys["ed25519_public"]))
	if err != nil || !bytes.Equal(pub.Marshal(), hostPub.Marshal()) {
		t.Errorf("ed25519_public is not the host key's public half (%v)", err)
	}
}

func TestUserDataYAML(t *testing.T) {
	s := testSeed(t)
	ud, err := s.UserDataYAML()
	if err != nil {
		t.Fatal(err)
	}
	checkOwnConfig(t, s, ud)

	// Quoting: what YAML would misread, and characters outside ASCII.
	s.AuthorizedKeys = append(s.AuthorizedKeys, strings.Replace(s.AuthorizedKeys[0], "alice@host", `"quoted" \back: #x é€ 𝄞`, 1))
	s.Shell = "/bin/sh"
	ud, err = s.UserDataYAML()
	if err != nil {
		t.Fatal(err)
	}
	checkOwnConfig(t, s, ud)
}

// parts reads a MIME multipart/mixed user-data file as cloud-init does and
// gives its parts' headers and decoded bodies.
func parts(t *testing.T, ud []byte) ([]map[string]string, [][]byte) {
	t.Helper()
	if !strings.Contains(strings.ToLower(string(ud[:min(len(ud), 4096)])), "mime-version:") {
		t.Fatal("no MIME-Version in the first 4096 bytes: cloud-init would not read it as MIME")
	}
	msg, err := mail.ReadMessage(bytes.NewReader(ud))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("Content-Type %q (%v)", mt, err)
	}
	var headers []map[string]string
	var bodies [][]byte
	r := multipart.NewReader(msg.Body, params["boundary"])
	for {
		p, err := r.NextRawPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		h := map[string]string{}
		for k := range p.Header {
			h[k] = p.Header.Get(k)
		}
		if strings.EqualFold(h["Content-Transfer-Encoding"], "base64") {
			if body, err = base64.StdEncoding.DecodeString(strings.Join(strings.Fields(string(body)), "")); err != nil {
				t.Fatal(err)
			}
		}
		headers = append(headers, h)
		bodies = append(bodies, body)
	}
	return headers, bodies
}

// checkArchive checks that ud is the archive of the user's document user,
// kept byte for byte as a text/plain part, then minivirt's configuration.
func checkArchive(t *testing.T, s Seed, ud, user []byte) {
	t.Helper()
	h, b := parts(t, ud)
	if len(h) != 2 {
		t.Fatalf("%d parts, want 2", len(h))
	}
	if ct := h[0]["Content-Type"]; !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("user's part: Content-Type %q, want text/plain (cloud-init then sniffs its first line)", ct)
	}
	if !bytes.Equal(b[0], user) {
		t.Errorf("user's part altered:\n%q\nwant:\n%q", b[0], user)
	}
	if ct := h[1]["Content-Type"]; !strings.HasPrefix(ct, "text/cloud-config") {
		t.Errorf("minivirt's part: Content-Type %q", ct)
	}
	if mt := h[1]["Merge-Type"]; mt != "dict(no_replace,recurse_list)+list(append)+str()" {
		t.Errorf("minivirt's part: Merge-Type %q", mt)
	}
	checkOwnConfig(t, s, b[1])
}

func TestUserDataMergesCloudConfig(t *testing.T) {
	s := testSeed(t)
	s.UserData = []byte("#cloud-config\nusers:\n  - default\npackages: [htop]\nruncmd:\n  - echo \"h\u00e9llo \u20ac\" > /tmp/x\n")
	ud, err := s.UserDataYAML()
	if err != nil {
		t.Fatal(err)
	}
	checkArchive(t, s, ud, s.UserData)

	// Compressed, it is the same document.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(s.UserData)
	zw.Close()
	user := s.UserData
	s.UserData = gz.Bytes()
	if ud, err = s.UserDataYAML(); err != nil {
		t.Fatal(err)
	}
	checkArchive(t, s, ud, user)
}

func TestUserDataScriptKeptAsIs(t *testing.T) {
	s := testSeed(t)
	s.UserData = []byte("#!/bin/sh\nprintf '%s\\n' \"--$1\" >/tmp/ran\n\x00\xff not even UTF-8\n")
	ud, err := s.UserDataYAML()
	if err != nil {
		t.Fatal(err)
	}
	checkArchive(t, s, ud, s.UserData)
}

func TestUserDataMIMENested(t *testing.T) {
	s := testSeed(t)
	s.UserData = []byte("Content-Type: multipart/mixed; boundary=\"XYZ\"\nMIME-Version: 1.0\n\n" +
		"--XYZ\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho one\n" +
		"--XYZ\nContent-Type: text/cloud-config\n\n#cloud-config\nruncmd: [two]\n" +
		"--XYZ--\n")
	ud, err := s.UserDataYAML()
	if err != nil {
		t.Fatal(err)
	}
	h, b := parts(t, ud)
	if len(h) != 2 || !strings.HasPrefix(h[0]["Content-Type"], "multipart/mixed") {
		t.Fatalf("parts %v, want the user's multipart/mixed then minivirt's", h)
	}
	// The nested part, headers and all, is the user's document.
	i := bytes.Index(ud, []byte("Content-Type: multipart/mixed; boundary=\"XYZ\""))
	if i < 0 || !bytes.HasPrefix(ud[i:], s.UserData) {
		t.Error("the user's MIME archive is not nested whole")
	}
	checkOwnConfig(t, s, b[1])
}
