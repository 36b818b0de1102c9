package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/launcher"
)

// rssOf is the resident memory of pid, in bytes.
func rssOf(pid int) uint64 {
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// fdCount is the number of open descriptors of pid.
func fdCount(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatalf("descriptors of %d: %v", pid, err)
	}
	return len(entries)
}

// helpers lists live vmchannel helper processes of this host.
func (h *host) helpers() []int {
	return testenv.Processes(func(argv []string) bool {
		return len(argv) > 1 && argv[1] == launcher.HelperCommand && testenv.Mentioning(h.top)(argv)
	})
}

// TestFlood: a guest opening connections in a tight loop for 10 s. The
// limit holds, the host service and `minivirt status` keep answering, and
// afterwards the supervisor's descriptors and the helper processes are back
// where they started.
func TestFlood(t *testing.T) {
	forNetworks(t, func(t *testing.T, network string) {
		h := newHost(t)
		var served atomic.Int64
		svc := listen(t, filepath.Join(h.top, "svc.sock"), func(c net.Conn) {
			defer c.Close()
			io.Copy(io.Discard, c)
			served.Add(1)
		})
		const limit = 8
		h.boot(guest{name: "flood", network: network, devices: vmchannelXML(600, svc.path, fmt.Sprintf("maxconnections='%d'", limit))})
		st := h.status("flood")
		fdsBefore := fdCount(t, st.SupervisorPID)
		rssBefore := rssOf(st.SupervisorPID)

		done := make(chan string, 1)
		go func() {
			out, _ := h.exec("flood", "minivirt-guest flood 10 10.0.2.4:600", 2*time.Minute)
			done <- out
		}()
		var out string
		polls := 0
		for out == "" {
			select {
			case out = <-done:
				continue
			case <-time.After(500 * time.Millisecond):
			}
			c := h.channelCounters("flood", 600) // status answers during the flood
			if c.Active > limit {
				t.Errorf("active %d over the limit %d", c.Active, limit)
			}
			// The host service answers a direct client during the flood.
			if conn, err := net.DialTimeout("unix", svc.path, 5*time.Second); err != nil {
				t.Errorf("the host service did not answer during the flood: %v", err)
			} else {
				conn.Close()
			}
			polls++
		}
		if !strings.Contains(out, "flood ok=") || polls < 5 {
			t.Fatalf("flood output %q after %d polls", out, polls)
		}
		t.Logf("guest: %s; host served %d", strings.TrimSpace(out), served.Load())

		deadline := time.Now().Add(30 * time.Second)
		for {
			c := h.channelCounters("flood", 600)
			fds := fdCount(t, st.SupervisorPID)
			if c.Active == 0 && fds <= fdsBefore && len(h.helpers()) == 0 {
				rss := rssOf(st.SupervisorPID)
				t.Logf("%s: counters after the flood: %+v; supervisor descriptors %d before, %d after; RSS %.1f MB before, %.1f MB after",
					network, c, fdsBefore, fds, float64(rssBefore)/1e6, float64(rss)/1e6)
				if rss > rssBefore+64<<20 {
					t.Errorf("the supervisor grew by %d MB in the flood", (rss-rssBefore)>>20)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the flood: counters %+v, supervisor descriptors %d (before %d), helpers %v", c, fds, fdsBefore, h.helpers())
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
}

// TestHostServiceDies: the host service goes away in the middle of a
// stream: the guest sees its connection end promptly, and the supervisor
// lives on and serves the next connection.
func TestHostServiceDies(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	path := filepath.Join(h.top, "svc.sock")
	var dying atomic.Bool
	dying.Store(true)
	listen(t, path, func(c net.Conn) {
		if dying.Load() { // read a little of the stream, then vanish
			io.CopyN(io.Discard, c, 256<<10)
			c.Close()
			return
		}
		b, _ := io.ReadAll(c)
		c.Write(append([]byte("reply: "), b...))
		c.Close()
	})
	h.boot(guest{name: "dies", devices: vmchannelXML(600, path)})
	st := h.status("dies")
	start := time.Now()
	out, rc := h.exec("dies", "minivirt-guest bulk 67108864 10.0.2.4:600", 2*time.Minute)
	if rc == 0 {
		t.Errorf("a 64 MiB stream to a service that died after 256 KiB succeeded: %q", out)
	}
	t.Logf("the guest saw the end after %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	if after := h.status("dies"); !after.Supervised || after.SupervisorPID != st.SupervisorPID {
		t.Fatalf("the supervisor did not live on: %+v", after)
	}
	dying.Store(false)
	if out, rc := h.exec("dies", "minivirt-guest request 10.0.2.4:600 again", time.Minute); rc != 0 || !strings.Contains(out, "reply: reply: again") {
		t.Errorf("the next connection: exit %d, %q", rc, out)
	}
}

// TestStartDestroyCycles: 50 start/destroy cycles of one domain leak no
// process, socket, run directory or descriptor.
func TestStartDestroyCycles(t *testing.T) {
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	agent := filepath.Join(h.top, "agent.sock")
	h.OK(guest{name: "cyc", devices: vmchannelXML(600, svc.path) +
		`<channel type='unix'><source mode='bind' path='` + agent + `'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`}.xml(), "define", "-")
	var qemuFDs []int
	for i := 0; i < 50; i++ {
		h.OK("", "start", "cyc")
		st := h.status("cyc")
		qemuFDs = append(qemuFDs, fdCount(t, st.QEMUPID))
		h.OK("", "destroy", "cyc")
		if alive(st.QEMUPID) || alive(st.SupervisorPID) {
			t.Fatalf("cycle %d: QEMU or the supervisor outlived destroy", i)
		}
	}
	if qemuFDs[0] != qemuFDs[49] {
		t.Errorf("QEMU's descriptors grew from %d to %d over 50 cycles: %v", qemuFDs[0], qemuFDs[49], qemuFDs)
	}
	if left := h.processes(); len(left) > 0 {
		t.Errorf("processes left: %v", left)
	}
	entries, _ := os.ReadDir(h.runDir)
	if len(entries) != 0 {
		t.Errorf("run directory entries left: %v", entries)
	}
	if exists(agent) {
		t.Error("the virtio-serial socket was left behind")
	}
	if st := h.status("cyc"); st.State != "shut off" || st.Reason != "destroyed" {
		t.Errorf("final state %+v", st)
	}
}
