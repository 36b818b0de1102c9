package integration

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestAutostartAcrossBoot: two domains run, the host "reboots" (every
// process of theirs is killed, as a power cut would), and the boot entry
// point starts the marked one and not the other.
func TestAutostartAcrossBoot(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.boot(guest{name: "marked"})
	h.boot(guest{name: "unmarked"})
	h.OK("", "autostart", "marked")
	for _, n := range []string{"marked", "unmarked"} { // the power cut
		st := h.status(n)
		killPid(st.SupervisorPID)
		killPid(st.QEMUPID)
		waitDead(t, st.SupervisorPID, 10*time.Second)
		waitDead(t, st.QEMUPID, 10*time.Second)
	}
	out := h.OK("", "start", "--autostart")
	if !strings.Contains(out, "Domain marked started") || strings.Contains(out, "unmarked") {
		t.Errorf("start --autostart printed %q", out)
	}
	h.waitLogCount("marked", readyLine, 2, bootDeadline)
	if st := h.status("marked"); st.State != "running" {
		t.Errorf("marked: %+v", st)
	}
	if st := h.status("unmarked"); st.State != "shut off" {
		t.Errorf("unmarked: %+v", st)
	}
	if out := h.OK("", "start", "--autostart"); !strings.Contains(out, "Domain marked is already running") {
		t.Errorf("a second start --autostart printed %q", out)
	}
	h.OK("", "destroy", "marked")
}

// TestDomifaddr: on minivirt's network the address is the DHCP lease the
// stack handed out; on QEMU's it is libslirp's fixed one.
func TestDomifaddr(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	h.boot(guest{name: "lease", cmdline: "minivirt.dhcp", devices: vmchannelXML(600, svc.path)})
	h.waitLog("lease", "minivirt-guest: dhcp 10.0.2.15/24", time.Minute)
	row := regexp.MustCompile(`(?m)^ net0 +([0-9a-f:]{17}) +ipv4 +10\.0\.2\.15/24$`)
	if out := h.OK("", "domifaddr", "lease"); !row.MatchString(out) {
		t.Errorf("netstack domifaddr:\n%s", out)
	}
	h.boot(guest{name: "fixed", devices: `<interface type='user'><mac address='52:54:00:aa:bb:cc'/></interface>`})
	if out := h.OK("", "domifaddr", "fixed", "-o", "json"); !strings.Contains(out, `"mac": "52:54:00:aa:bb:cc"`) || !strings.Contains(out, `"address": "10.0.2.15/24"`) {
		t.Errorf("slirp domifaddr: %s", out)
	}
	h.OK("", "destroy", "lease")
	h.OK("", "destroy", "fixed")
	if _, errs, code := h.Run("", "domifaddr", "fixed"); code == 0 || !strings.Contains(errs, "not running") {
		t.Errorf("domifaddr of a shut off domain: exit %d, %q", code, errs)
	}
}

// TestStartPaused: start --paused holds the CPUs before the firmware's
// first instruction and records paused (user), as libvirt does; resume
// runs them and the guest boots.
func TestStartPaused(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.OK(guest{name: "held"}.xml(), "define", "-")
	h.fails("--paused and --autostart", "start", "--paused", "--autostart")
	if out := h.OK("", "start", "--paused", "held"); out != "Domain held started\n" {
		t.Errorf("start --paused printed %q", out)
	}
	if out := h.OK("", "domstate", "held", "--reason"); out != "paused (user)\n\n" {
		t.Errorf("domstate after start --paused: %q", out)
	}
	var reply struct {
		Return struct {
			Status  string
			Running bool
		}
	}
	if err := json.Unmarshal([]byte(h.OK("", "qmp", "held", `{"execute":"query-status"}`)), &reply); err != nil || reply.Return.Status != "prelaunch" || reply.Return.Running {
		t.Errorf("QEMU after start --paused: %+v, %v; want prelaunch, not running", reply.Return, err)
	}
	h.OK("", "resume", "held")
	h.waitLog("held", readyLine, bootDeadline)
	if st := h.status("held"); st.State != "running" || st.Reason != "unpaused" {
		t.Errorf("after resume: %+v", st)
	}
	h.OK("", "destroy", "held")
}
