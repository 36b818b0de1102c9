package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/fakeqemu"
	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/store"
)

var binary string

// TestMain builds the real binary once: the store is shared between
// processes, so the tests run minivirt as separate processes. The test
// binary doubles as a fake QEMU (internal/fakeqemu) for domains that name
// it as their emulator, and as minivirt itself with asCLI set.
func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeqemu.Env); mode != "" {
		os.Exit(fakeqemu.Main(mode, os.Args[1:]))
	}
	if os.Getenv(asCLI) == "1" {
		os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	dir, err := os.MkdirTemp("", "minivirt-cli-test")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "minivirt")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building minivirt: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's private minivirt: its own state and runtime directories.
type env struct {
	testenv.CLI
	stateDir string
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	return &env{CLI: testenv.CLI{T: t, Binary: binary, StateDir: state, RunDir: filepath.Join(dir, "run")}, stateDir: state}
}

func domainXML(name, devices string) string {
	return `<domain type='qemu'><name>` + name + `</name><memory unit='MiB'>64</memory>
<os><kernel>/boot/vmlinuz</kernel></os><devices>` + devices + `</devices></domain>`
}

func TestDefineDumpxmlRoundTrip(t *testing.T) {
	e := newEnv(t)
	out := e.OK("", "define", "../../examples/libvirt-style.xml")
	if out != "Domain libvirt-style defined\n" {
		t.Errorf("define printed %q", out)
	}
	first := e.OK("", "dumpxml", "libvirt-style")
	e.OK(first, "define", "-")
	second := e.OK("", "dumpxml", "libvirt-style")
	if first != second {
		t.Errorf("define -> dumpxml -> define -> dumpxml differs:\n%s\n---\n%s", first, second)
	}
}

func TestRedefineKeepsUUID(t *testing.T) {
	e := newEnv(t)
	e.OK(domainXML("keep", ""), "define", "-")
	uuid := listed(t, e)["keep"]
	e.OK(domainXML("keep", `<interface type='user'/>`), "define", "-")
	if got := listed(t, e)["keep"]; got != uuid {
		t.Errorf("redefine changed uuid %s to %s", uuid, got)
	}
	other := strings.Replace(domainXML("keep", ""), "<os>", "<uuid>6c3b1f0e-8a4d-4f6b-9c2e-1d7a5b3e9f40</uuid><os>", 1)
	if _, errs, code := e.Run(other, "define", "-"); code == 0 || !strings.Contains(errs, "already exists with uuid "+uuid) {
		t.Errorf("redefining with another uuid: exit %d, %q", code, errs)
	}
}

func listed(t *testing.T, e *env) map[string]string {
	t.Helper()
	out := e.OK("", "list", "--all", "-o", "json")
	var items []listItem
	if err := jsonUnmarshal(out, &items); err != nil {
		t.Fatalf("list -o json: %v: %s", err, out)
	}
	m := map[string]string{}
	for _, it := range items {
		if it.State != "shut off" {
			t.Errorf("%s: state %q", it.Name, it.State)
		}
		m[it.Name] = it.UUID
	}
	return m
}

// TestBadInput: every bad command is one "minivirt: " line on stderr, a
// non-zero exit, and leaves the stored domains byte for byte as they were.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	e.OK("", "define", "../../examples/demo.xml")
	e.OK("", "define", "../../examples/channels.xml")
	before := e.OK("", "list", "--all", "-o", "json")
	dumpBefore := e.OK("", "dumpxml", "demo")
	vmc := func(attrs, path string) string {
		return domainXML("bad", `<interface type='vmchannel'><source `+attrs+`/><target path='`+path+`'/></interface>`)
	}
	tests := []struct {
		name, stdin string
		args        []string
		want        string
	}{
		{"malformed XML", "<domain><name>x</name>", []string{"define", "-"}, "XML: "},
		{"no name", domainXML("", ""), []string{"define", "-"}, `<name>: empty; give it a value`},
		{"slash name", domainXML("a/b", ""), []string{"define", "-"}, `name "a/b"`},
		{"65 chars", domainXML(strings.Repeat("x", 65), ""), []string{"define", "-"}, "1-64 characters"},
		{"port 0", vmc("port='0'", "/s"), []string{"define", "-"}, "vmchannel port 0: must be 1-65535"},
		{"port 65536", vmc("port='65536'", "/s"), []string{"define", "-"}, "vmchannel port 65536: must be 1-65535"},
		{"relative path", vmc("port='600'", "rel.sock"), []string{"define", "-"}, "must be an absolute path"},
		{"long path", vmc("port='600'", "/"+strings.Repeat("p", 120)), []string{"define", "-"}, "longer than the 107"},
		{"gateway", vmc("address='10.0.2.2' port='600'", "/s"), []string{"define", "-"}, "gateway"},
		{"outside", vmc("address='10.0.3.4' port='600'", "/s"), []string{"define", "-"}, "outside the user network"},
		{"duplicate port", domainXML("bad", `<interface type='vmchannel'><source port='1'/><target path='/a'/></interface><interface type='vmchannel'><source port='1'/><target path='/b'/></interface>`), []string{"define", "-"}, "used twice"},
		{"missing file", "", []string{"define", "/nonexistent.xml"}, "/nonexistent.xml: no such file"},
		{"redefine demo badly", strings.Replace(mustRead(t, "../../examples/demo.xml"), "port='600'", "port='0'", 1), []string{"define", "-"}, "vmchannel port 0"},
		{"vmchannel add dup", "", []string{"vmchannel", "add", "demo", "--port", "600", "--path", "/x"}, "used twice"},
		{"vmchannel add gateway", "", []string{"vmchannel", "add", "demo", "--port", "601", "--path", "/x", "--address", "10.0.2.2"}, "gateway"},
		{"vmchannel add relative", "", []string{"vmchannel", "add", "demo", "--port", "601", "--path", "x"}, "absolute"},
		{"vmchannel add port", "", []string{"vmchannel", "add", "demo", "--port", "70000", "--path", "/x"}, "vmchannel port 70000: must be 1-65535"},
		{"vmchannel add no path", "", []string{"vmchannel", "add", "demo", "--port", "601"}, "--path"},
		{"vmchannel remove absent", "", []string{"vmchannel", "remove", "demo", "--port", "9"}, "no such vmchannel"},
		{"unknown domain dumpxml", "", []string{"dumpxml", "nope"}, `domain "nope" not found`},
		{"unknown domain undefine", "", []string{"undefine", "nope"}, `domain "nope" not found`},
		{"unknown domain vmchannel list", "", []string{"vmchannel", "list", "nope"}, `domain "nope" not found`},
		{"unknown domain vmchannel add", "", []string{"vmchannel", "add", "nope", "--port", "1", "--path", "/x"}, `domain "nope" not found`},
		{"bad output", "", []string{"list", "-o", "yaml"}, `output format "yaml"`},
		{"unknown verb", "", []string{"frobnicate"}, "unknown command"},
		{"missing argument", "", []string{"dumpxml"}, "dumpxml: give NAME"},
		{"bad flag", "", []string{"list", "--bogus"}, "unknown flag"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errs, code := e.Run(tt.stdin, tt.args...)
			if code == 0 {
				t.Fatalf("exit 0; stdout %q", out)
			}
			lines := strings.Split(strings.TrimSuffix(errs, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "minivirt: ") || !strings.Contains(lines[0], tt.want) {
				t.Fatalf("stderr %q; want one 'minivirt: ' line containing %q", errs, tt.want)
			}
			if strings.Contains(errs, "panic") || strings.Contains(errs, "goroutine") {
				t.Fatalf("panicked: %s", errs)
			}
		})
	}
	if after := e.OK("", "list", "--all", "-o", "json"); after != before {
		t.Errorf("bad input changed the store:\n%s\n---\n%s", before, after)
	}
	if after := e.OK("", "dumpxml", "demo"); after != dumpBefore {
		t.Errorf("bad input changed demo:\n%s\n---\n%s", dumpBefore, after)
	}
}

// TestDamagedStore: whatever state the database file is in, every command
// answers in one "minivirt: " line: a file cut short or overwritten makes
// each command name the file as damaged, say what to do and exit non-zero,
// without a panic and without writing to the file; an empty file (a crash
// between creating and initialising it) lists as no domains, and the next
// define initialises it.
func TestDamagedStore(t *testing.T) {
	e := newEnv(t)
	e.OK("", "define", "../../examples/demo.xml")
	e.OK("", "define", "../../examples/channels.xml")
	db := filepath.Join(e.stateDir, store.FileName)
	good := []byte(mustRead(t, db))
	page := os.Getpagesize()
	garbage := make([]byte, len(good))
	for i := range garbage {
		garbage[i] = byte(i*7919 + i>>8)
	}
	damaged := map[string][]byte{
		"one page":    good[:page],
		"4097 bytes":  good[:4097],
		"2 pages + 1": good[:2*page+1],
		"half":        good[:len(good)/2],
		"overwritten": garbage,
	}
	commands := [][]string{
		{"list", "--all"},
		{"list", "--all", "-o", "json"},
		{"dumpxml", "demo"},
		{"dominfo", "demo"},
		{"domstate", "demo"},
		{"status", "demo", "-o", "json"},
		{"vmchannel", "list", "demo"},
		{"autostart", "demo"},
		{"undefine", "demo"},
		{"define", "-"},
	}
	for name, data := range damaged {
		if err := os.WriteFile(db, data, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, args := range commands {
			out, errs, code := e.Run(domainXML("fresh", ""), args...)
			lines := strings.Split(strings.TrimSuffix(errs, "\n"), "\n")
			if code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "minivirt: state database "+db+" is damaged") ||
				!strings.Contains(lines[0], "move it away") {
				t.Errorf("%s: minivirt %s: exit %d, stderr:\n%s\nwant one line 'minivirt: state database %s is damaged ...'", name, strings.Join(args, " "), code, errs, db)
			}
			if strings.Contains(out+errs, "goroutine") {
				t.Errorf("%s: minivirt %s panicked", name, strings.Join(args, " "))
			}
		}
		if now, _ := os.ReadFile(db); string(now) != string(data) {
			t.Errorf("%s: the commands changed the damaged file", name)
		}
	}

	if err := os.WriteFile(db, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := e.OK("", "list", "--all", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("list of an empty database file: %q", out)
	}
	if info, err := os.Stat(db); err != nil || info.Size() != 0 {
		t.Errorf("list wrote to the empty database file: %v", err)
	}
	e.OK("", "define", "../../examples/demo.xml")
	if got := listed(t, e); len(got) != 1 || got["demo"] == "" {
		t.Errorf("after define into an empty database file: %v", got)
	}
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

func mustRead(t *testing.T, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestParallelDefines(t *testing.T) {
	e := newEnv(t)
	const n = 20
	var wg sync.WaitGroup
	errs := make(chan string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := e.Command(domainXML(fmt.Sprintf("par%02d", i), ""), "define", "-")
			if out, err := c.CombinedOutput(); err != nil {
				errs <- fmt.Sprintf("define par%02d: %v: %s", i, err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}
	got := listed(t, e)
	if len(got) != n {
		t.Fatalf("%d domains listed; want %d: %v", len(got), n, got)
	}
	seen := map[string]bool{}
	for name, uuid := range got {
		if seen[uuid] {
			t.Errorf("%s: uuid %s shared", name, uuid)
		}
		seen[uuid] = true
	}
}

// TestKilledDefine kills defines at random points with SIGKILL and checks
// after each that the file opens and every earlier definition is intact.
func TestKilledDefine(t *testing.T) {
	e := newEnv(t)
	e.OK("", "define", "../../examples/libvirt-style.xml")
	want := map[string]string{"libvirt-style": e.OK("", "dumpxml", "libvirt-style")}
	big := strings.Repeat(`<controller type='usb' index='0' model='qemu-xhci'/>`, 2000) // a long write
	// Kill anywhere from start-up to just past the end of a define. The
	// window starts at one define's duration and adapts (the machine's load
	// changes how long a define takes) until some defines were killed and
	// some landed: only then has the test shown anything.
	start := time.Now()
	e.OK(domainXML("calibrate", big), "define", "-")
	window := time.Since(start) * 6 / 5
	killed, landed, tries := 0, 0, 0
	for ; tries < 120 && (tries < 30 || killed < 5 || landed < 5); tries++ {
		name := fmt.Sprintf("k%03d", tries)
		c := e.Command(domainXML(name, big), "define", "-")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rand.Int64N(int64(window))))
		c.Process.Signal(syscall.SIGKILL)
		if c.Wait() != nil {
			killed++
		}
		s, err := store.Open(e.stateDir, time.Second)
		if err != nil {
			t.Fatalf("after killing define %d: %v", tries, err)
		}
		for n, xml := range want {
			d, err := s.Get(n)
			if err != nil {
				t.Fatalf("after killing define %d: %s: %v", tries, n, err)
			}
			if got, _ := d.XML(); string(got) != xml {
				t.Fatalf("after killing define %d: %s changed", tries, n)
			}
		}
		if d, err := s.Get(name); err == nil { // it landed before the kill: keep checking it
			out, _ := d.XML()
			want[name] = string(out)
			landed++
		}
		s.Close()
		switch {
		case landed == 0 && tries%5 == 4:
			window *= 2
		case killed == 0 && tries%5 == 4:
			window /= 2
		}
	}
	if killed < 5 || landed < 5 {
		t.Fatalf("%d defines killed, %d landed in %d tries (window %s): the kills missed the define's lifetime", killed, landed, tries, window)
	}
	t.Logf("%d of %d defines killed; %d definitions intact", killed, tries, len(want))
}

func TestLockTimeout(t *testing.T) {
	e := newEnv(t)
	e.OK("", "define", "../../examples/demo.xml")
	s, err := store.Open(e.stateDir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, errs, code := e.Run("", "--lock-timeout", "300ms", "list", "--all")
	s.Close()
	if code == 0 || !strings.Contains(errs, "held by another minivirt process for over 300ms") {
		t.Errorf("list while the store is held: exit %d, %q", code, errs)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("lock timeout of 300ms took %s", time.Since(start))
	}
	e.OK("", "list", "--all") // free again
}

func TestVMChannelCommands(t *testing.T) {
	e := newEnv(t)
	e.OK(domainXML("vc", ""), "define", "-")
	e.OK("", "vmchannel", "add", "vc", "--port", "600", "--path", "/run/a b.sock")
	e.OK("", "vmchannel", "add", "vc", "--port", "601", "--path", "/run/b.sock", "--address", "10.0.2.5", "--proxy", "v2", "--max-connections", "8")
	// The JSON fields scripts read, as they always were.
	type item struct {
		Address        string `json:"address"`
		Port           uint16 `json:"port"`
		Path           string `json:"path"`
		Proxy          string `json:"proxy,omitempty"`
		MaxConnections int    `json:"max_connections"`
		Active         uint64 `json:"active"`
		Total          uint64 `json:"total"`
	}
	var items []item
	if err := jsonUnmarshal(e.OK("", "vmchannel", "list", "vc", "-o", "json"), &items); err != nil {
		t.Fatal(err)
	}
	want := []item{{Address: "10.0.2.4", Port: 600, Path: "/run/a b.sock", MaxConnections: 256},
		{Address: "10.0.2.5", Port: 601, Path: "/run/b.sock", Proxy: "v2", MaxConnections: 8}}
	if fmt.Sprint(items) != fmt.Sprint(want) {
		t.Errorf("vmchannel list = %+v; want %+v", items, want)
	}
	dump := e.OK("", "dumpxml", "vc", "--libvirt")
	if !strings.Contains(dump, `<interface type="vhostuser">`) || !strings.Contains(dump, `<property name="vectors" type="unsigned" value="0">`) || !strings.Contains(dump, `<vmchannel address="10.0.2.5" port="601" path="/run/b.sock" proxy="v2" maxconnections="8">`) {
		t.Errorf("libvirt form lacks minivirt's network or the vmchannels:\n%s", dump)
	}
	e.OK("", "vmchannel", "remove", "vc", "--port", "600")
	if err := jsonUnmarshal(e.OK("", "vmchannel", "list", "vc", "-o", "json"), &items); err != nil || len(items) != 1 || items[0].Port != 601 {
		t.Errorf("after remove: %+v, %v", items, err)
	}
	e.OK("", "undefine", "vc")
	if out := e.OK("", "list", "--all", "-o", "json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("after undefine: %s", out)
	}
}

func TestResolveDirs(t *testing.T) {
	envOf := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	tests := []struct {
		name               string
		stateF, runF       string
		env                func(string) string
		uid                int
		wantState, wantRun string
	}{
		{"root defaults", "", "", envOf(), 0, "/var/lib/minivirt", "/run/minivirt"},
		{"user xdg", "", "", envOf("HOME", "/home/u", "XDG_DATA_HOME", "/d", "XDG_RUNTIME_DIR", "/run/user/1000"), 1000, "/d/minivirt", "/run/user/1000/minivirt"},
		{"user fallback", "", "", envOf("HOME", "/home/u"), 1000, "/home/u/.local/share/minivirt", "/home/u/.local/share/minivirt/run"},
		{"environment", "", "", envOf("MINIVIRT_STATE_DIR", "/s", "MINIVIRT_RUN_DIR", "/r"), 0, "/s", "/r"},
		{"flags win", "/fs", "/fr", envOf("MINIVIRT_STATE_DIR", "/s", "MINIVIRT_RUN_DIR", "/r"), 1000, "/fs", "/fr"},
	}
	for _, tt := range tests {
		d, err := resolveDirs(tt.stateF, tt.runF, tt.env, tt.uid)
		if err != nil || d.state != tt.wantState || d.run != tt.wantRun {
			t.Errorf("%s: %+v, %v; want %s, %s", tt.name, d, err, tt.wantState, tt.wantRun)
		}
	}
	if _, err := resolveDirs("", "", envOf(), 1000); err == nil {
		t.Error("no HOME for a user: no error")
	}
}
