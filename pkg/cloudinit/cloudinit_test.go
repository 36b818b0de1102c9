package cloudinit

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ciHarness runs cloud-init's own user-data processing on the file named by
// its argument, as the guest's cloud-init does: the MIME parts with their
// types, then the cloud-config parts merged by their Merge-Type, and the
// merged configuration checked against cloud-init's schema. It prints JSON.
const ciHarness = `
import json, os, sys, tempfile, logging
logging.disable(logging.CRITICAL)
from cloudinit import handlers, helpers, user_data, util
from cloudinit.handlers.cloud_config import CloudConfigPartHandler
from cloudinit.config.schema import SchemaValidationError, get_schema, validate_cloudconfig_schema
d = tempfile.mkdtemp()
paths = helpers.Paths({"cloud_dir": d, "run_dir": d})
paths.get_ipath = lambda name=None: os.path.join(d, name or "")
msg = user_data.UserDataProcessor(paths).process(open(sys.argv[1], "rb").read())
cc = CloudConfigPartHandler(paths)
cc.handle_part(None, handlers.CONTENT_START, None, None, None, None)
parts = []
def cb(data, filename, payload, headers):
    ctype = headers["Content-Type"]
    parts.append({"type": ctype, "payload": payload if isinstance(payload, str) else ""})
    if ctype == "text/cloud-config":
        cc.handle_part(None, ctype, filename, payload, None, headers)
handlers.walk(msg, cb, {})
cc.handle_part(None, handlers.CONTENT_END, None, None, None, None)
merged = util.load_yaml(open(os.path.join(d, "cloud_config")).read())
err = ""
try:
    validate_cloudconfig_schema(merged, get_schema(), strict=True)
except SchemaValidationError as e:
    err = str(e)
print(json.dumps({"parts": parts, "merged": merged, "schema_error": err}))
`

type ciResult struct {
	Parts []struct {
		Type    string `json:"type"`
		Payload string `json:"payload"`
	} `json:"parts"`
	Merged struct {
		Users         []any             `json:"users"`
		SSHPwauth     *bool             `json:"ssh_pwauth"`
		SSHDeleteKeys *bool             `json:"ssh_deletekeys"`
		SSHKeys       map[string]string `json:"ssh_keys"`
		Runcmd        []string          `json:"runcmd"`
		Packages      []string          `json:"packages"`
	} `json:"merged"`
	SchemaError string `json:"schema_error"`
}

// cloudInit runs ciHarness on user-data ud with the python3 that imports
// cloud-init, or skips the test. MINIVIRT_CLOUDINIT_PYTHONPATH may name a
// directory holding the cloudinit package (Debian's cloud-init unpacked
// with dpkg-deb -x, plus its python3-* dependencies), so that cloud-init
// need not be installed on the test machine.
func cloudInit(t *testing.T, ud []byte) ciResult {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not found")
	}
	env := os.Environ()
	if p := os.Getenv("MINIVIRT_CLOUDINIT_PYTHONPATH"); p != "" {
		env = append(env, "PYTHONPATH="+p)
	}
	probe := exec.Command(py, "-c", "import cloudinit.user_data, cloudinit.config.schema")
	probe.Env = env
	if out, err := probe.CombinedOutput(); err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Skipf("python3 cannot import cloud-init (install Debian's cloud-init, or set MINIVIRT_CLOUDINIT_PYTHONPATH): %s", lines[len(lines)-1])
	}
	file := filepath.Join(t.TempDir(), "user-data")
	if err := os.WriteFile(file, ud, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, "-c", ciHarness, file)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cloud-init harness: %v", err)
	}
	var r ciResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if r.SchemaError != "" {
		t.Errorf("cloud-init's schema refuses the merged configuration: %s", r.SchemaError)
	}
	return r
}

// checkMinivirtUser: the merged configuration's last user is minivirt's.
func checkMinivirtUser(t *testing.T, s Seed, r ciResult) {
	t.Helper()
	if len(r.Merged.Users) == 0 {
		t.Fatal("no users")
	}
	u, _ := r.Merged.Users[len(r.Merged.Users)-1].(map[string]any)
	if u["name"] != s.User || u["sudo"] != sudoRule || u["lock_passwd"] != true {
		t.Errorf("last user %v, want minivirt's", u)
	}
	hostPub, _ := HostPublicKey(s.HostKey)
	if r.Merged.SSHKeys["ed25519_public"] != AuthorizedKey(hostPub, "") {
		t.Errorf("ssh_keys.ed25519_public = %q", r.Merged.SSHKeys["ed25519_public"])
	}
	if k, err := ParsePrivateKey([]byte(r.Merged.SSHKeys["ed25519_private"])); err != nil || !k.Equal(s.HostKey) {
		t.Errorf("ssh_keys.ed25519_private is not the host key (%v)", err)
	}
}

// TestCloudInitAlone: cloud-init reads minivirt's user-data as it is meant.
func TestCloudInitAlone(t *testing.T) {
	s := testSeed(t)
	ud, err := s.UserDataYAML()
	if err != nil {
		t.Fatal(err)
	}
	r := cloudInit(t, ud)
	if len(r.Parts) != 1 || r.Parts[0].Type != "text/cloud-config" {
		t.Errorf("parts %+v", r.Parts)
	}
	checkMinivirtUser(t, s, r)
	if len(r.Merged.Users) != 1 || r.Merged.SSHPwauth == nil || *r.Merged.SSHPwauth || r.Merged.SSHDeleteKeys == nil || !*r.Merged.SSHDeleteKeys {
		t.Errorf("merged %+v", r.Merged)
	}
}

// TestCloudInitMerge: cloud-init merges the user's #cloud-config and
// minivirt's as UserDataHelp says: lists appended, the user's own settings
// kept, minivirt's added.
func TestCloudInitMerge(t *testing.T) {
	s := testSeed(t)
	s.UserData = []byte("#cloud-config\nusers:\n  - default\n  - name: bob\nssh_pwauth: true\npackages: [htop]\nruncmd:\n  - echo h\u00e9llo \u20ac\nssh_keys:\n  rsa_public: ssh-rsa AAAA\n")
	ud, err := s.UserDataYAML()
	if err != nil {
		t.Fatal(err)
	}
	r := cloudInit(t, ud)
	if len(r.Parts) != 2 || r.Parts[0].Type != "text/cloud-config" || r.Parts[0].Payload != string(s.UserData) {
		t.Errorf("parts %+v", r.Parts)
	}
	checkMinivirtUser(t, s, r)
	m := r.Merged
	if len(m.Users) != 3 || m.Users[0] != "default" {
		t.Errorf("users %v, want default, bob, then minivirt's", m.Users)
	}
	if m.SSHPwauth == nil || !*m.SSHPwauth {
		t.Error("the user's ssh_pwauth: true was not kept")
	}
	if m.SSHDeleteKeys == nil || !*m.SSHDeleteKeys || m.SSHKeys["rsa_public"] != "ssh-rsa AAAA" {
		t.Errorf("ssh_deletekeys %v, ssh_keys %v", m.SSHDeleteKeys, m.SSHKeys)
	}
	if len(m.Packages) != 1 || len(m.Runcmd) != 1 || m.Runcmd[0] != "echo h\u00e9llo \u20ac" {
		t.Errorf("the user's packages %q and runcmd %q", m.Packages, m.Runcmd)
	}
}

// TestCloudInitScript: a user's script reaches cloud-init as a script,
// byte for byte, beside minivirt's configuration.
func TestCloudInitScript(t *testing.T) {
	s := testSeed(t)
	s.UserData = []byte("#!/bin/sh\necho \"h\u00e9llo\" > /tmp/ran\n")
	ud, err := s.UserDataYAML()
	if err != nil {
		t.Fatal(err)
	}
	r := cloudInit(t, ud)
	if len(r.Parts) != 2 || r.Parts[0].Type != "text/x-shellscript" || r.Parts[0].Payload != string(s.UserData) {
		t.Errorf("parts %+v", r.Parts)
	}
	checkMinivirtUser(t, s, r)
	if len(r.Merged.Users) != 1 {
		t.Errorf("users %v", r.Merged.Users)
	}
}
