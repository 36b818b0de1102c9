package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/proc"
)

// TestReadOnlyVerbsKeepUserFiles: a file of the user's inside RUN/NAME
// survives every verb. Once, `status` removed RUN/NAME whenever it held no
// live supervisor record.
func TestReadOnlyVerbsKeepUserFiles(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.OK(guest{name: "victim"}.xml(), "define", "-")
	notes := filepath.Join(h.runDirOf("victim"), "notes.txt")
	check := func(after string) {
		t.Helper()
		if data, err := os.ReadFile(notes); err != nil || string(data) != "mine\n" {
			t.Fatalf("after %s: the user's file is gone or changed (%q, %v)", after, data, err)
		}
	}
	verbs := [][]string{
		{"status", "victim"}, {"status", "victim", "-o", "json"}, {"list"}, {"list", "--all", "-o", "json"},
		{"log", "victim"}, {"vmchannel", "list", "victim"}, {"dumpxml", "victim"}, {"dumpxml", "victim", "--libvirt"},
		{"destroy", "victim"}, {"shutdown", "victim"}, {"suspend", "victim"}, {"qmp", "victim", `{"execute":"query-status"}`},
	}

	// A directory minivirt did not make: never touched, and start refuses it.
	if err := os.MkdirAll(h.runDirOf("victim"), 0o700); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(notes, []byte("mine\n"), 0o600)
	runAll := func() {
		t.Helper()
		for _, v := range verbs {
			h.Run("", v...)
			check(strings.Join(v, " "))
		}
	}
	runAll()
	h.fails("was not made by minivirt", "start", "victim")
	check("start")

	// A stale directory minivirt made, holding the user's file as well:
	// start cleans only its own files, keeps the user's and says so.
	os.Remove(notes)
	staleRunDir(t, h.runDirOf("victim"), deadProcess(t))
	os.WriteFile(notes, []byte("mine\n"), 0o600)
	runAll()
	h.fails("did not make", "start", "victim")
	check("start")
	if st := h.status("victim"); st.State != "shut off" {
		t.Errorf("after a refused start: %+v", st)
	}
}

// deadProcess returns the identity of a process that has exited.
func deadProcess(t *testing.T) proc.ID {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	id, err := proc.Lookup(cmd.Process.Pid)
	cmd.Wait()
	if err != nil { // gone before it was looked at: any start time will do
		boot, _ := proc.BootID()
		id = proc.ID{PID: cmd.Process.Pid, StartTime: 1, BootID: boot}
	}
	return id
}

// TestUnsafeRunDirRefused: a runtime directory that is a symbolic link, is
// group-writable or belongs to another user is refused, and left as it was.
func TestUnsafeRunDirRefused(t *testing.T) {
	t.Parallel()
	type dirCase struct {
		name   string
		make   func(t *testing.T, dir string)
		saying string
	}
	cases := []dirCase{
		{"symlink", func(t *testing.T, dir string) {
			target := dir + ".target"
			os.Mkdir(target, 0o700)
			if err := os.Symlink(target, dir); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"group-writable", func(t *testing.T, dir string) {
			os.Mkdir(dir, 0o700)
			os.Chmod(dir, 0o770)
		}, "others can write"},
	}
	if os.Geteuid() == 0 {
		cases = append(cases, dirCase{"another uid", func(t *testing.T, dir string) {
			os.Mkdir(dir, 0o700)
			if err := os.Chown(dir, 4242, 4242); err != nil { // a throwaway uid no user has
				t.Fatal(err)
			}
		}, "belongs to uid 4242"})
	}
	for _, c := range cases {
		for _, level := range []string{"root", "domain"} {
			t.Run(c.name+"/"+level, func(t *testing.T) {
				h := newHost(t)
				h.OK(guest{name: "g"}.xml(), "define", "-")
				dir := h.runDir
				if level == "domain" {
					os.Mkdir(h.runDir, 0o700)
					dir = h.runDirOf("g")
				}
				c.make(t, dir)
				before := describeDir(t, dir)
				h.fails(c.saying, "start", "g")
				if after := describeDir(t, dir); after != before {
					t.Errorf("the directory changed: %s -> %s", before, after)
				}
				if st := h.status("g"); st.State != "shut off" {
					t.Errorf("state after a refused start: %+v", st)
				}
			})
		}
	}
}

func describeDir(t *testing.T, dir string) string {
	t.Helper()
	fi, err := os.Lstat(dir)
	if err != nil {
		return "absent"
	}
	st := fi.Sys().(*syscall.Stat_t)
	link, _ := os.Readlink(dir)
	entries, _ := os.ReadDir(dir)
	return fmt.Sprintf("mode %v uid %d link %q entries %d", fi.Mode(), st.Uid, link, len(entries))
}

// TestStatusRacesStarts: 200 status and list calls race 10 starts, and all
// 10 domains start. Once, a status that came between a start's mkdir and its
// owner file removed the starting domain's directory.
//
// The race is in the host's run directories, not in the guests: each
// domain boots firmware from a blank disk and idles there, so ten of them
// cost the host little while every other test boots its kernel.
func TestStatusRacesStarts(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	const domains, readers, calls = 10, 8, 200
	blank := filepath.Join(h.top, "blank.img")
	if err := os.WriteFile(blank, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < domains; i++ {
		h.OK(idleFirmwareXML(fmt.Sprintf("s%d", i), blank), "define", "-")
	}
	var wg sync.WaitGroup
	startErrs := make(chan string, domains)
	for i := 0; i < domains; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, errs, code := h.Run("", "start", fmt.Sprintf("s%d", i)); code != 0 {
				startErrs <- fmt.Sprintf("s%d: %s", i, errs)
			}
		}()
	}
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := 0; c < calls/readers; c++ {
				if c%2 == 0 {
					h.Run("", "list", "--all")
				} else {
					h.Run("", "status", fmt.Sprintf("s%d", (r+c)%domains), "-o", "json")
				}
			}
		}()
	}
	wg.Wait()
	close(startErrs)
	for e := range startErrs {
		t.Errorf("start failed beside status and list: %s", e)
	}
	var running []struct{ Name string }
	json.Unmarshal([]byte(h.OK("", "list", "-o", "json")), &running)
	if len(running) != domains {
		t.Errorf("%d domains run, want %d", len(running), domains)
	}
	for i := 0; i < domains; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); h.Run("", "destroy", fmt.Sprintf("s%d", i)) }()
	}
	wg.Wait()
}

// TestLargeQMPReplyThenShutdown: a reply over 64 KiB once blinded the
// supervisor: shutdown failed and status said running forever.
func TestLargeQMPReplyThenShutdown(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.boot(guest{name: "q"})
	out := h.OK("", "qmp", "q", `{"execute":"query-qmp-schema"}`)
	if len(out) < 64<<10 {
		t.Fatalf("query-qmp-schema gave %d bytes; want over 64 KiB", len(out))
	}
	h.OK("", "shutdown", "q", "--timeout", "60s")
	if st := h.status("q"); st.State != "shut off" || st.Reason != "shutdown" {
		t.Errorf("after shutdown: %+v", st)
	}
}

// TestRunPowerOffUnderStatusLoad: concurrent status loops run while a
// guest powers off under `run`; run exits 0 and the state is shut off
// (shutdown): a clean power-off is never recorded as a crash.
//
// The load runs while it matters, from the guest's ready line until run
// has recorded the end; the guest powers off on the ACPI power button
// pressed inside that window.
func TestRunPowerOffUnderStatusLoad(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	type result struct {
		errs string
		code int
	}
	done := make(chan result, 1)
	go func() {
		cmd := h.Command(guest{name: "busy"}.xml(), "run", "--timeout", "300s", "-")
		var errb strings.Builder
		cmd.Stderr = &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			code = -1
			errb.WriteString(err.Error())
		}
		done <- result{errb.String(), code}
	}()
	h.waitLog("busy", readyLine, bootDeadline)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				h.Run("", "status", "busy", "-o", "json")
			}
		}()
	}
	h.OK("", "shutdown", "busy", "--timeout", "180s")
	var r result
	select {
	case r = <-done:
	case <-time.After(3 * time.Minute):
		t.Fatal("run did not exit within 3m of the guest powering off")
	}
	close(stop)
	wg.Wait()
	if r.code != 0 {
		t.Errorf("run exited %d: %s", r.code, r.errs)
	}
	if st := h.status("busy"); st.State != "shut off" || st.Reason != "shutdown" {
		t.Errorf("after a clean power-off under load: %+v", st)
	}
}

// TestRunRmBesideDefinedDomain: `run --rm` with the name of a defined
// domain runs beside it, and leaves that domain as it was. Once, it
// redefined the domain and then undefined it.
func TestRunRmBesideDefinedDomain(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.OK(guest{name: "twin", cmdline: "quiet"}.xml(), "define", "-")
	xmlBefore := h.OK("", "dumpxml", "twin")
	listBefore := h.OK("", "list", "--all", "-o", "json")
	_, errs, code := h.Run(guest{name: "twin", cmdline: "minivirt.poweroff"}.xml(), "run", "--rm", "--timeout", "120s", "-")
	if code != 0 {
		t.Fatalf("run --rm beside twin: exit %d: %s", code, errs)
	}
	if !strings.Contains(errs, "domain twin exists; this transient run is named twin-") {
		t.Errorf("run --rm did not say which name it ran under: %q", errs)
	}
	if after := h.OK("", "dumpxml", "twin"); after != xmlBefore {
		t.Errorf("twin's definition changed:\n%s\n---\n%s", xmlBefore, after)
	}
	if after := h.OK("", "list", "--all", "-o", "json"); after != listBefore {
		t.Errorf("the domain list changed:\n%s\n---\n%s", listBefore, after)
	}
	if exists(h.logPath("twin")) {
		t.Error("a console log appeared for twin, which never ran")
	}
}

// idleFirmwareXML is a domain that boots only its firmware, which finds
// nothing bootable on the blank disk and waits, idle.
func idleFirmwareXML(name, blankDisk string) string {
	return `<domain type='kvm'><name>` + name + `</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='` + blankDisk + `'/><target dev='vda' bus='virtio'/><readonly/></disk>
</devices></domain>`
}
