package manager

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/fakeqemu"
	"github.com/minivirt/minivirt/pkg/domain"
)

// ConnectGuest end to end, but for the VM: the engine, the supervisor's
// control socket and its network stack, and a guest stack in the fake
// QEMU. The guest's greeting comes first; the caller's CloseWrite reaches
// the guest as end of stream and the guest still answers, then its close
// ends the stream; a port nobody listens on is refused within a second or
// two, saying so; status counts both, by guest port.
func TestConnectGuest(t *testing.T) {
	m, name := fakeDomain(t, "guest", `<vmchannels network='netstack'/>`)
	ctx := deadline(t, 60*time.Second)
	payload := bytes.Repeat([]byte("minivirt "), 100_000)

	c, err := m.ConnectGuest(ctx, name, fakeqemu.GuestPort)
	if err != nil {
		t.Fatal(err)
	}
	if err := fakeqemu.CheckEcho(c, payload, 30*time.Second); err != nil {
		t.Error(err)
	}

	began := time.Now()
	c, err = m.ConnectGuest(ctx, name, 22)
	if err := fakeqemu.CheckRefusal(c, err, began, ErrGuestRefused, 22); err != nil {
		t.Error(err)
	}

	var counted map[uint16]ConnectStatus
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		st, err := m.Status(ctx, name)
		if err != nil || st.Live == nil {
			t.Fatalf("status: %v", err)
		}
		counted = map[uint16]ConnectStatus{}
		for _, cs := range st.Live.Connects {
			counted[cs.GuestPort] = cs
		}
		if counted[fakeqemu.GuestPort].Active == 0 { // the relay's end of the first connection is over
			break
		}
	}
	if c7 := counted[fakeqemu.GuestPort]; c7.Total != 1 || c7.Active != 0 || c7.BytesOut != uint64(len(payload)) || c7.BytesIn != uint64(len(payload)+len(fakeqemu.Greeting)) {
		t.Errorf("port %d counted %+v", fakeqemu.GuestPort, c7)
	}
	if c22 := counted[22]; c22.Total != 1 || c22.Refused != 1 {
		t.Errorf("port 22 counted %+v", c22)
	}
	if _, err := m.Destroy(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := m.ConnectGuest(ctx, name, 22); !errors.As(err, new(*NotRunningError)) {
		t.Errorf("connect to a domain that is not running: %v", err)
	}
}

// Off minivirt's own network there is no way in, and the error says what
// to do; on it, a guest that never answers (the fake without one) is
// reported as such, within the supervisor's bound.
func TestConnectGuestElsewhere(t *testing.T) {
	m, name := fakeDomain(t, "normal", `<interface type='user'/>`)
	ctx := deadline(t, 60*time.Second)
	_, err := m.ConnectGuest(ctx, name, 22)
	if err == nil || !strings.Contains(err.Error(), "QEMU's user network") || !strings.Contains(err.Error(), "port add fake --guest-port 22") {
		t.Errorf("connect on QEMU's user network: %v", err)
	}
	if _, err := m.Destroy(ctx, name); err != nil {
		t.Fatal(err)
	}

	m, name = fakeDomain(t, "normal", `<vmchannels network='netstack'/>`)
	began := time.Now()
	_, err = m.ConnectGuest(ctx, name, 22)
	if err == nil || !strings.Contains(err.Error(), "does not answer at "+domain.GuestAddress.String()) || time.Since(began) > time.Minute { // a hang guard
		t.Errorf("connect without a guest: %v after %v", err, time.Since(began))
	}
	if _, err := m.Destroy(ctx, name); err != nil {
		t.Fatal(err)
	}
}

// Access is recorded only for a defined domain and only as ssh can take it,
// read back as written, missing for a domain create did not make, and
// removed with the domain; the files it names are left alone.
func TestAccess(t *testing.T) {
	dir := t.TempDir()
	m := &Manager{StateDir: dir, RunDir: filepath.Join(dir, "run"), LockTimeout: time.Second}
	good := Access{User: "debian", IdentityFile: filepath.Join(dir, "id_ed25519"), KnownHostsFile: filepath.Join(dir, "100% known_hosts")}
	if err := m.SetAccess("vm", good); !errors.Is(err, ErrNotFound) {
		t.Errorf("access for an undefined domain: %v", err)
	}
	d, err := domain.Parse(strings.NewReader(`<domain type='qemu'><name>vm</name><memory>65536</memory><os><kernel>/k</kernel></os></domain>`))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Define(d); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Access("vm"); !errors.Is(err, ErrNoAccess) || !strings.Contains(err.Error(), "minivirt create") {
		t.Errorf("access before any was recorded: %v", err)
	}
	for _, bad := range []Access{
		{User: "", IdentityFile: good.IdentityFile, KnownHostsFile: good.KnownHostsFile},
		{User: "-oProxyCommand=x", IdentityFile: good.IdentityFile, KnownHostsFile: good.KnownHostsFile},
		{User: "a b", IdentityFile: good.IdentityFile, KnownHostsFile: good.KnownHostsFile},
		{User: "debian", IdentityFile: "id_ed25519", KnownHostsFile: good.KnownHostsFile},
		{User: "debian", IdentityFile: good.IdentityFile, KnownHostsFile: dir + "/a\"b"},
		{User: "debian", IdentityFile: dir + "/${HOME}", KnownHostsFile: good.KnownHostsFile},
		{User: "debian", IdentityFile: dir + "/new\nline", KnownHostsFile: good.KnownHostsFile},
	} {
		if err := m.SetAccess("vm", bad); err == nil {
			t.Errorf("access %+v was recorded", bad)
		}
	}
	if err := m.SetAccess("vm", good); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Access("vm"); err != nil || got != good {
		t.Errorf("access read back: %+v, %v; want %+v", got, err, good)
	}
	if err := os.WriteFile(good.IdentityFile, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Undefine("vm"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(m.AccessPath("vm")); !os.IsNotExist(err) {
		t.Errorf("the access record after undefine: %v", err)
	}
	if _, err := os.Stat(good.IdentityFile); err != nil {
		t.Errorf("undefine removed the key the access named: %v", err)
	}
	entries, _ := os.ReadDir(filepath.Dir(m.AccessPath("vm")))
	if len(entries) != 0 {
		t.Errorf("the access directory keeps %d files", len(entries))
	}
}
