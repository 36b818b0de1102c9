package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/proc"
	"github.com/minivirt/minivirt/pkg/store"
)

// virshStore defines three domains in three states without booting any:
// up (running) and held (paused) have runtime records naming a live process
// the test starts; off never ran. up is marked for autostart.
func virshStore(t *testing.T) (*env, map[string]string) {
	t.Helper()
	e := newEnv(t)
	for _, n := range []string{"up", "held", "off"} {
		e.OK(domainXML(n, ""), "define", "-")
	}
	e.OK("", "autostart", "up")
	sleeper := exec.Command("sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	id, err := proc.Lookup(sleeper.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(e.stateDir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ name, state, reason string }{{"up", store.StateRunning, "booted"}, {"held", store.StatePaused, "user"}} {
		if err := s.SetRuntime(r.name, store.Runtime{State: r.state, Reason: r.reason, QEMU: id, Supervisor: id, Network: "netstack"}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	uuids := map[string]string{}
	for _, n := range []string{"up", "held", "off"} {
		uuids[n] = strings.TrimSpace(e.OK("", "domuuid", n))
	}
	return e, uuids
}

// TestVirshHabits runs every verb and flag a virsh user types through the
// real binary and checks what it prints and how it exits.
func TestVirshHabits(t *testing.T) {
	e, uuids := virshStore(t)
	upUUID := uuids["up"]
	tests := []struct {
		args []string
		code int
		out  string // a regular expression the output must match
	}{
		{[]string{"list"}, 0, `(?s)^ Id +Name +State\n-+\n 2 +held +paused\n 1 +up +running\n\n$`}, // active: running and paused
		{[]string{"list", "--all"}, 0, `(?s) 2 +held +paused\n - +off +shut off\n 1 +up +running`},
		{[]string{"list", "--inactive"}, 0, `(?s)^ Id +Name +State\n-+\n - +off +shut off\n\n$`},
		{[]string{"list", "--name"}, 0, `^held\nup\n\n$`},
		{[]string{"list", "--all", "--name"}, 0, `^held\noff\nup\n\n$`},
		{[]string{"list", "--uuid", "--state-running"}, 0, `^` + upUUID + `\n\n$`},
		{[]string{"list", "--state-running"}, 0, `(?s) 1 +up +running\n\n$`},
		{[]string{"list", "--state-paused", "--name"}, 0, `^held\n\n$`},
		{[]string{"list", "--state-shutoff", "--name"}, 0, `^off\n\n$`},
		{[]string{"list", "--all", "--autostart", "--name"}, 0, `^up\n\n$`},
		{[]string{"list", "--all", "-o", "json"}, 0, `"id": 1,\s+"name": "up"`},
		{[]string{"list", "extra"}, 1, `^minivirt: list takes no arguments; got "extra"`},
		{[]string{"dominfo", "up"}, 0, `(?s)Id: +1\nName: +up\nUUID: +` + upUUID + `\nOS Type: +hvm\nState: +running\nCPU\(s\): +1\nMax memory: +65536 KiB\n.*Persistent: +yes\nAutostart: +enable`},
		{[]string{"dominfo", "off"}, 0, `(?s)Id: +-\n.*State: +shut off.*Autostart: +disable`},
		{[]string{"dominfo", "off", "-o", "json"}, 0, `"id": null,\s+"name": "off"`},
		{[]string{"domstate", "held"}, 0, `^paused\n\n$`},
		{[]string{"domstate", "held", "--reason"}, 0, `^paused \(user\)\n\n$`},
		{[]string{"domstate", "off", "--reason"}, 0, `^shut off\n\n$`},
		{[]string{"domuuid", "up"}, 0, `^` + upUUID + `\n\n$`},
		{[]string{"domname", upUUID}, 0, `^up\n\n$`},
		{[]string{"domname", strings.ToUpper(strings.ReplaceAll(upUUID, "-", ""))}, 0, `^up\n\n$`},
		{[]string{"domid", "up"}, 0, `^1\n\n$`},
		{[]string{"domid", "off"}, 0, `^-\n\n$`},
		{[]string{"dumpxml", upUUID, "--inactive"}, 0, `<name>up</name>`},
		{[]string{"dumpxml", "off", "--security-info", "--migratable"}, 0, `<name>off</name>`},
		{[]string{"status", upUUID, "-o", "json"}, 0, `"name": "up"`},
		{[]string{"status", "off", "-o", "json"}, 0, `"state": "shut off"`},
		{[]string{"vmchannel", "list", uuids["off"]}, 0, `^ Address`},
		{[]string{"autostart", "off"}, 0, `^Domain 'off' marked as autostarted\n`},
		{[]string{"autostart", "off", "--disable"}, 0, `^Domain 'off' unmarked as autostarted\n`},
		{[]string{"status", "nosuch", "-o", "json"}, 1, `^\{"error":"domain \\"nosuch\\" not found; see ` + "`minivirt list --all`" + `"\}\nminivirt: domain "nosuch" not found`},
		{[]string{"undefine", "nosuch"}, 1, `^minivirt: domain "nosuch" not found`},
		{[]string{"vmchannel", "frob", "off"}, 1, `^minivirt: minivirt vmchannel has no command "frob"; it has: add, list, remove\n$`},
		{[]string{"vmchannel", "lst", "off"}, 1, `did you mean "list"\?`},
		{[]string{"statsu", "up"}, 1, `^minivirt: unknown command "statsu" for "minivirt"; did you mean "status"\?`},
		{[]string{"vmchannel", "add", "off", "--port", "-1", "--path", "/x"}, 1, `^minivirt: flag --port "-1": must be a whole number, 0 or more\n$`},
		{[]string{"shutdown", "off", "--timeout", "soon"}, 1, `^minivirt: flag --timeout "soon": must be a duration such as 90s or 2m\n$`},
		{[]string{"start"}, 1, `^minivirt: start: give NAME; see`},
		{[]string{"__complete", "dominfo", "h"}, 0, `^held\n:4\n`},
		{[]string{"completion", "bash"}, 0, `bash completion V2 for minivirt`},
	}
	for _, tt := range tests {
		out, errs, code := e.Run("", tt.args...)
		got := out + errs
		if code != tt.code || !regexp.MustCompile(tt.out).MatchString(got) {
			t.Errorf("minivirt %s: exit %d, output:\n%s\nwant exit %d, matching %s", strings.Join(tt.args, " "), code, got, tt.code, tt.out)
		}
	}
	// A domain never started has no "since".
	if out := e.OK("", "status", "off", "-o", "json"); strings.Contains(out, "since") {
		t.Errorf("status of a domain never started shows since:\n%s", out)
	}
	// A JSON file given as XML says so, in the user's terms.
	_, errs, code := e.Run(`{"name": "x"}`, "define", "-")
	if code == 0 || !strings.Contains(errs, "not XML") || strings.Count(errs, "\n") != 1 {
		t.Errorf("JSON as XML: exit %d, %q", code, errs)
	}
}

// Every verb's --help has an example.
func TestEveryVerbHasAnExample(t *testing.T) {
	root := (&app{}).rootCommand()
	for _, c := range root.Commands() {
		if c.Hidden || c.Name() == "help" {
			continue
		}
		if c.Example == "" {
			t.Errorf("%s --help has no example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			if !sub.Hidden && sub.Example == "" && c.Name() != "completion" {
				t.Errorf("%s --help has no example", sub.CommandPath())
			}
		}
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(data))
}

// TestEdit: a scripted editor's good edit lands; a bad edit, declined when
// edit offers to try again, leaves the store byte-identical.
func TestEdit(t *testing.T) {
	e := newEnv(t)
	e.OK(domainXML("ed", ""), "define", "-")
	dir := t.TempDir()
	editor := func(name, script string) string {
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755)
		return path
	}
	good := editor("good", `sed -i 's|<memory unit="KiB">65536</memory>|<memory unit="KiB">131072</memory>|' "$1"`)
	bad := editor("bad", `printf '<domain type="qemu"><name>ed</name>' > "$1"`)
	rename := editor("rename", `sed -i 's|<name>ed</name>|<name>other</name>|' "$1"`)
	noop := editor("noop", `true`)

	cmd := e.Command("", "edit", "ed")
	cmd.Env = append(cmd.Env, "VISUAL=", "EDITOR="+good)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "Domain 'ed' XML configuration edited.") {
		t.Fatalf("good edit: %v\n%s", err, out)
	}
	if !strings.Contains(e.OK("", "dumpxml", "ed"), `<memory unit="KiB">131072</memory>`) {
		t.Error("the good edit did not land")
	}

	db := filepath.Join(e.stateDir, store.FileName)
	for _, ed := range []string{bad, rename} {
		before := fileSum(t, db)
		cmd = e.Command("n\n", "edit", "ed")
		cmd.Env = append(cmd.Env, "VISUAL=", "EDITOR="+ed)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Failed. Try again? [y,n]") {
			t.Errorf("%s edit: %v\n%s", filepath.Base(ed), err, out)
		}
		if after := fileSum(t, db); after != before {
			t.Errorf("%s edit changed the store", filepath.Base(ed))
		}
	}
	cmd = e.Command("", "edit", "ed")
	cmd.Env = append(cmd.Env, "VISUAL=", "EDITOR="+noop)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "not changed") {
		t.Errorf("unchanged edit: %v\n%s", err, out)
	}
}

// TestAutostartUnit: --install-unit writes a unit that runs start --autostart
// against this state directory.
func TestAutostartUnit(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	e.OK("", "autostart", "--install-unit", "--unit-dir", dir)
	unit := mustRead(t, filepath.Join(dir, "minivirt-autostart.service"))
	if !strings.Contains(unit, "--state-dir "+e.stateDir) || !strings.Contains(unit, "start --autostart") || !strings.Contains(unit, "WantedBy=multi-user.target") {
		t.Errorf("unit:\n%s", unit)
	}
}

// TestAutostartUnitPaths: the unit's ExecStart= runs the binary at its path
// with the state and run directories as they are, whatever they hold:
// spaces, quotes, backslashes, % (a systemd specifier) and $ (a systemd
// variable). The line is read back by systemd's rules (systemdCommand).
func TestAutostartUnitPaths(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir()) // os.Executable reports the resolved path
	if err != nil {
		t.Fatal(err)
	}
	// systemd refuses quotes and backslashes in the executable's own path
	// (see TestAutostartUnitRefusesExecutable), so the binary's directory
	// holds the rest.
	binDir := filepath.Join(root, "bin 100% $HOME ${X}")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "minivirt")
	copyFile(t, binary, bin)
	state := filepath.Join(root, `state "q" 'a' \n 50%n $USER $$ ${X}`)
	run := filepath.Join(root, "run\tdir;%%")
	cli := testenv.CLI{T: t, Binary: bin, StateDir: state, RunDir: run}
	unitDir := t.TempDir()
	cli.OK("", "autostart", "--install-unit", "--unit-dir", unitDir)
	unit := mustRead(t, filepath.Join(unitDir, "minivirt-autostart.service"))
	var value string
	for line := range strings.Lines(unit) {
		if v, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "ExecStart="); ok {
			value = v
		}
	}
	path, argv, err := systemdCommand(value)
	if err != nil {
		t.Fatalf("ExecStart=%s: %v", value, err)
	}
	want := []string{bin, "--state-dir", state, "--run-dir", run, "start", "--autostart"}
	if path != bin || !slices.Equal(argv, want) {
		t.Errorf("ExecStart=%s\nruns %q with argv %q\nwant %q with argv %q", value, path, argv, bin, want)
	}
}

// TestAutostartUnitRefusesExecutable: a binary whose path systemd would
// refuse to run gets no unit, and the user is told why in one line.
func TestAutostartUnitRefusesExecutable(t *testing.T) {
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	binDir := filepath.Join(root, `it's "here"`)
	if err := os.Mkdir(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "minivirt")
	copyFile(t, binary, bin)
	cli := testenv.CLI{T: t, Binary: bin, StateDir: filepath.Join(root, "state"), RunDir: filepath.Join(root, "run")}
	unitDir := t.TempDir()
	_, errs, code := cli.Run("", "autostart", "--install-unit", "--unit-dir", unitDir)
	if code == 0 || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "minivirt: autostart --install-unit: ") || !strings.Contains(errs, "systemd refuses") {
		t.Errorf("exit %d, stderr %q; want one line saying systemd refuses the path", code, errs)
	}
	if entries, _ := os.ReadDir(unitDir); len(entries) != 0 {
		t.Errorf("a unit was written: %v", entries)
	}
}

// TestExecStart: execStart's line reads back by systemd's rules as the argv
// it was given, whatever its words hold; a plain command line stays plain;
// an executable systemd would not run is refused.
func TestExecStart(t *testing.T) {
	words := []string{"", " ", "a b", `"`, `'`, `\`, `\"x\"`, "%", "%%", "%n", "%%n", "$", "$$", "$HOME", "${HOME}", ";", "#x",
		"tab\there", "new\nline", "\x01\x7f", "\xff\xfe not UTF-8", "é ü", "\u00a0", "\ufffd", "@x", "-x", "a=b", `%$\"'%%$$`}
	for _, exe := range []string{"/usr/bin/minivirt", "/opt/a b/minivirt", "/opt/100%/minivirt", "/opt/$x ${y} $$/minivirt", "/opt/é\u0085/minivirt"} {
		argv := append([]string{exe}, words...)
		line, err := execStart(argv)
		if err != nil {
			t.Errorf("%q: %v", exe, err)
			continue
		}
		path, got, err := systemdCommand(line)
		if err != nil || path != exe || !slices.Equal(got, argv) {
			t.Errorf("ExecStart=%s\nruns %q with argv %q (%v)\nwant %q with argv %q", line, path, got, err, exe, argv)
		}
	}
	const plain = "/usr/local/bin/minivirt --state-dir /var/lib/minivirt --run-dir /run/minivirt start --autostart"
	if line, err := execStart(strings.Fields(plain)); line != plain || err != nil {
		t.Errorf("plain command line written as %s (%v)", line, err)
	}
	for _, exe := range []string{`/opt/"q"/minivirt`, "/opt/it's/minivirt", `/opt/back\slash/minivirt`, "/opt/new\nline/minivirt", "/opt/\x7f/minivirt", "minivirt"} {
		if line, err := execStart([]string{exe, "start"}); err == nil {
			t.Errorf("%q: written as %s; want it refused", exe, line)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// systemdCommand reads an ExecStart= value as systemd does and returns the
// executable it runs and the argv it gives it; it fails where systemd
// would, and also at any specifier but %% and any variable but $$, since
// the unit uses neither. The rules, from systemd.service(5) "Command
// lines", systemd.syntax(7) "Quoting" and systemd's config_parse_exec and
// exec code:
//
//   - words split at whitespace outside quotes; '...' and "..." quote, also
//     within a word; a backslash escape (\\ \" \' \s \n \t \xNN ...) is
//     decoded in or out of quotes, \xNN to that byte;
//   - in every word % starts a specifier, %% is a %;
//   - a first word starting with @ is the executable, and the second word is
//     argv[0]; otherwise the first word is both;
//   - the executable must not hold a quote, a backslash or a control
//     character ("Executable name contains special characters");
//   - variables are expanded in argv, argv[0] included, but not in the
//     executable: $$ is a $.
func systemdCommand(value string) (path string, argv []string, err error) {
	words, err := systemdWords(value)
	if err != nil {
		return "", nil, err
	}
	if len(words) == 0 {
		return "", nil, errors.New("no command")
	}
	for i, w := range words {
		if words[i], err = systemdSpecifiers(w); err != nil {
			return "", nil, err
		}
	}
	path, argv = words[0], words
	if p, ok := strings.CutPrefix(path, "@"); ok {
		if len(words) < 2 {
			return "", nil, errors.New("@ without argv[0]")
		}
		path, argv = p, words[1:]
	}
	if strings.ContainsAny(path, `"'\`) || strings.ContainsFunc(path, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return "", nil, fmt.Errorf("executable name contains special characters: %q", path)
	}
	if !filepath.IsAbs(path) {
		return "", nil, fmt.Errorf("executable %q: not an absolute path", path)
	}
	argv = slices.Clone(argv)
	for i, a := range argv {
		if argv[i], err = systemdVariables(a); err != nil {
			return "", nil, err
		}
	}
	return path, argv, nil
}

func systemdWords(s string) ([]string, error) {
	var words []string
	var word []byte
	inWord := false
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\':
			if i+1 == len(s) {
				return nil, errors.New("backslash at the end")
			}
			i++
			simple := map[byte]byte{'a': '\a', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t', 'v': '\v',
				'\\': '\\', '"': '"', '\'': '\'', 's': ' '}
			if d, ok := simple[s[i]]; ok {
				word = append(word, d)
			} else if s[i] == 'x' && i+2 < len(s) {
				var b byte
				if _, err := fmt.Sscanf(s[i+1:i+3], "%02x", &b); err != nil || b == 0 {
					return nil, fmt.Errorf("bad escape \\x%s", s[i+1:i+3])
				}
				word = append(word, b)
				i += 2
			} else {
				return nil, fmt.Errorf("unknown escape \\%c", s[i])
			}
			inWord = true
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			word = append(word, c)
		case c == '"' || c == '\'':
			quote, inWord = c, true
		case c == ' ' || c == '\t':
			if inWord {
				words, word, inWord = append(words, string(word)), nil, false
			}
		case c < ' ' || c == 0x7f:
			return nil, fmt.Errorf("control character %#x in the line", c)
		default:
			word, inWord = append(word, c), true
		}
	}
	if quote != 0 {
		return nil, errors.New("unterminated quote")
	}
	if inWord {
		words = append(words, string(word))
	}
	return words, nil
}

// systemdSpecifiers resolves %%, the one specifier the unit may use.
func systemdSpecifiers(w string) (string, error) {
	var out strings.Builder
	for i := 0; i < len(w); i++ {
		if w[i] == '%' {
			if i+1 == len(w) || w[i+1] != '%' {
				return "", fmt.Errorf("word %q: a specifier the unit did not mean", w)
			}
			i++
		}
		out.WriteByte(w[i])
	}
	return out.String(), nil
}

// systemdVariables resolves $$, the one variable syntax the unit may use.
func systemdVariables(w string) (string, error) {
	var out strings.Builder
	for i := 0; i < len(w); i++ {
		if w[i] == '$' {
			if i+1 == len(w) || w[i+1] != '$' {
				return "", fmt.Errorf("word %q: a variable the unit did not mean", w)
			}
			i++
		}
		out.WriteByte(w[i])
	}
	return out.String(), nil
}
