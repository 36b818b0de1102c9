package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNetstackDHCP: a guest that takes its address by DHCP (busybox udhcpc)
// gets 10.0.2.15 from minivirt's network and reaches its vmchannel.
func TestNetstackDHCP(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		h := newHost(t)
		svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
		b := backend
		if b == "vhost-user" {
			b = "" // the default
		}
		h.boot(guest{name: "dhcp", network: "netstack", backend: b, cmdline: "minivirt.dhcp", devices: vmchannelXML(600, svc.path)})
		if log := h.waitLog("dhcp", readyLine, time.Minute); !strings.Contains(log, "minivirt-guest: dhcp 10.0.2.15") {
			t.Fatalf("no DHCP lease of 10.0.2.15 in the console log:\n%s", log)
		}
		if out, rc := h.exec("dhcp", "minivirt-guest request 10.0.2.4:600 leased", time.Minute); rc != 0 || !strings.Contains(out, "reply: reply: leased") {
			t.Errorf("vmchannel after DHCP: exit %d, %q", rc, out)
		}
		js := h.OK("", "status", "dhcp", "-o", "json")
		if st := h.status("dhcp"); !strings.Contains(js, `"network": "netstack"`) || !strings.Contains(js, `"net_backend": "`+backend+`"`) || st.State != "running" {
			t.Errorf("status: %s", js)
		}
		// The stream backend is a fallback, and status says why.
		text := h.OK("", "status", "dhcp")
		if want := map[string]string{"vhost-user": "Network:     netstack, vhost-user\n",
			"stream": "Network:     netstack, stream (not vhost-user: the definition asks for it"}[backend]; !strings.Contains(text, want) {
			t.Errorf("status does not say %q:\n%s", want, text)
		}
	})
}

// TestNetstackIsolation: on minivirt's own network the gateway answers no
// port (a reset, at once), nothing beyond is routed (an outside address
// never answers), QEMU runs under the full seccomp set, and no process runs
// per guest connection.
func TestNetstackIsolation(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		network := map[string]string{"vhost-user": "netstack", "stream": netstackStream}[backend]
		h := newHost(t)
		tcp, port := listenTCP(t, func(c net.Conn) { c.Close() })
		svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
		h.boot(guest{name: "iso", network: network, devices: vmchannelXML(600, svc.path)})
		for _, addr := range []string{fmt.Sprintf("10.0.2.2:%d", port), "10.0.2.2:22", "10.0.2.4:601"} {
			out, rc := h.exec("iso", "minivirt-guest request "+addr+" probe", time.Minute)
			if rc == 0 || !strings.Contains(out, "connection refused") {
				t.Errorf("%s from the guest: exit %d, %q; want connection refused", addr, rc, out)
			}
		}
		// An outside address: the stack routes nothing, so the guest's SYN dies
		// inside the supervisor (and this probe never leaves the machine).
		if out, rc := h.exec("iso", "minivirt-guest request 192.0.2.1:80 probe", time.Minute); rc == 0 {
			t.Errorf("an outside address answered: %q", out)
		}
		if n := tcp.accepted.Load(); n != 0 {
			t.Errorf("the host's TCP listener was reached %d times from the guest", n)
		}
		st := h.status("iso")
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(st.QEMUPID) + "/cmdline")
		netdev := map[string]string{"netstack": "vhost-user,id=net0", netstackStream: "stream,id=net0"}[network]
		if strings.Contains(string(cmdline), "guestfwd") || !strings.Contains(string(cmdline), "spawn=deny") || !strings.Contains(string(cmdline), netdev) {
			t.Errorf("QEMU's argv: %q", cmdline)
		}
		if out, rc := h.exec("iso", "minivirt-guest parallel 8 10.0.2.4:600", time.Minute); rc != 0 || strings.Count(out, "reply: reply:") != 8 {
			t.Errorf("8 connections: exit %d:\n%s", rc, out)
		}
		if n := len(h.helpers()); n != 0 {
			t.Errorf("%d helper processes on minivirt's own network", n)
		}
	})
}

// TestNetstackSupervisorDies: the network lives in the supervisor, and
// QEMU 7.2's -netdev stream cannot reconnect. When the supervisor dies,
// QEMU keeps running, status tells the truth, destroy cleans up, and the
// next start brings a working network back.
func TestNetstackSupervisorDies(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), func(c net.Conn) {
		defer c.Close()
		b, _ := io.ReadAll(c)
		c.Write(append([]byte("reply: "), b...))
	})
	h.boot(guest{name: "nsd", network: "netstack", devices: vmchannelXML(600, svc.path)})
	st := h.status("nsd")
	killPid(st.SupervisorPID)
	waitDead(t, st.SupervisorPID, 10*time.Second)
	if !alive(st.QEMUPID) {
		t.Fatal("QEMU died with the supervisor")
	}
	if u := h.status("nsd"); u.State != "running" || u.Supervised {
		t.Errorf("status after the supervisor died: %+v", u)
	}
	// The guest's network is gone: its connection attempt fails.
	if out, rc := h.exec("nsd", "minivirt-guest request 10.0.2.4:600 void", 2*time.Minute); rc == 0 {
		t.Errorf("a connection without the network: %q", out)
	}
	h.OK("", "destroy", "nsd")
	if alive(st.QEMUPID) || exists(h.runDirOf("nsd")) {
		t.Error("destroy left QEMU or the run directory")
	}
	h.boot(guest{name: "nsd", network: "netstack", devices: vmchannelXML(600, svc.path)})
	if out, rc := h.exec("nsd", "minivirt-guest request 10.0.2.4:600 back", time.Minute); rc != 0 || !strings.Contains(out, "reply: reply: back") {
		t.Errorf("after the next start: exit %d, %q", rc, out)
	}
}

// TestNetstackBackpressure: a guest streaming to a host service that never
// reads meets TCP's flow control: the supervisor does not buffer the stream.
func TestNetstackBackpressure(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	stall := make(chan struct{})
	defer close(stall)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), func(c net.Conn) { <-stall; c.Close() })
	h.boot(guest{name: "bp", network: "netstack", devices: vmchannelXML(600, svc.path)})
	st := h.status("bp")
	before := rssOf(st.SupervisorPID)
	h.exec("bp", "minivirt-guest bulk 268435456 10.0.2.4:600 > /tmp/bulk.log 2>&1 & true", time.Minute)
	var c struct{ BytesIn uint64 }
	deadline := time.Now().Add(time.Minute)
	for { // until the stream has stalled: nothing more comes in
		c1 := h.channelCounters("bp", 600)
		time.Sleep(2 * time.Second)
		c2 := h.channelCounters("bp", 600)
		if c2.BytesIn > 0 && c2.BytesIn == c1.BytesIn {
			c.BytesIn = c2.BytesIn
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream never stalled: %+v", c2)
		}
	}
	after := rssOf(st.SupervisorPID)
	t.Logf("stalled after %d KiB of a 256 MiB stream; supervisor RSS %.1f MB before, %.1f MB after", c.BytesIn>>10, float64(before)/1e6, float64(after)/1e6)
	if c.BytesIn > 16<<20 {
		t.Errorf("%d MiB went into a service that reads nothing", c.BytesIn>>20)
	}
	if after > before+32<<20 {
		t.Errorf("the supervisor grew by %d MB", (after-before)>>20)
	}
}
