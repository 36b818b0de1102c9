package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

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
