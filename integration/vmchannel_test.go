package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/minivirt/minivirt/pkg/vmchannel"
)

func vmchannelXML(port int, path string, attrs ...string) string {
	return fmt.Sprintf(`<interface type='vmchannel'><source port='%d'/><target path='%s' %s/></interface>`, port, path, strings.Join(attrs, " "))
}

// channelCounters returns the counters `status -o json` shows for port.
func (h *host) channelCounters(name string, port int) vmchannel.Counters {
	h.t.Helper()
	var st struct {
		VMChannels []struct {
			Port int `json:"port"`
			vmchannel.Counters
		} `json:"vmchannels"`
	}
	if err := json.Unmarshal([]byte(h.OK("", "status", name, "-o", "json")), &st); err != nil {
		h.t.Fatal(err)
	}
	for _, c := range st.VMChannels {
		if c.Port == port {
			return c.Counters
		}
	}
	h.t.Fatalf("status of %s has no vmchannel on port %d", name, port)
	return vmchannel.Counters{}
}

// TestConcurrentConnections: 8 guest connections at once are 8 host accepts,
// each with its own payload and its own reply; the guest half-closes first.
// The target path holds a space.
func TestConcurrentConnections(t *testing.T) {
	forNetworks(t, func(t *testing.T, network string) {
		h := newHost(t)
		svc := listen(t, filepath.Join(h.top, "my service.sock"), nil)
		h.boot(guest{name: "c8", network: network, devices: vmchannelXML(600, svc.path)})
		out, rc := h.exec("c8", "minivirt-guest parallel 8 10.0.2.4:600", 60*time.Second)
		if rc != 0 {
			t.Fatalf("guest: exit %d:\n%s", rc, out)
		}
		var replies []string
		for _, line := range strings.Split(out, "\n") {
			if _, reply, ok := strings.Cut(line, " reply: "); ok {
				replies = append(replies, reply)
			}
		}
		sort.Strings(replies)
		if len(replies) != 8 {
			t.Fatalf("%d replies; want 8:\n%s", len(replies), out)
		}
		for i, r := range replies {
			if want := fmt.Sprintf("reply: hello from guest connection %d", i); r != want {
				t.Errorf("reply %d = %q; want %q", i, r, want)
			}
		}
		if n := svc.accepted.Load(); n != 8 {
			t.Errorf("%d host accepts; want 8", n)
		}
		c := h.channelCounters("c8", 600)
		if c.Total != 8 || c.Refused != 0 || c.BytesIn == 0 || c.BytesOut == 0 {
			t.Errorf("counters %+v", c)
		}
	})
}

// TestHostHalfClose: the host speaks first and half-closes; the guest sees
// the end of stream, then answers, and the host receives the answer.
func TestHostHalfClose(t *testing.T) {
	forNetworks(t, func(t *testing.T, network string) {
		h := newHost(t)
		got := make(chan string, 1)
		svc := listen(t, filepath.Join(h.top, "svc.sock"), func(c net.Conn) {
			defer c.Close()
			c.Write([]byte("banner from host"))
			c.(*net.UnixConn).CloseWrite()
			b, _ := io.ReadAll(c)
			got <- string(b)
		})
		h.boot(guest{name: "hf", network: network, devices: vmchannelXML(600, svc.path)})
		out, rc := h.exec("hf", "minivirt-guest hostfirst 10.0.2.4:600 guest-answer", 60*time.Second)
		if rc != 0 || !strings.Contains(out, "host said: banner from host") {
			t.Fatalf("guest: exit %d:\n%s", rc, out)
		}
		select {
		case s := <-got:
			if s != "guest-answer" {
				t.Errorf("host read %q", s)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the host never got the guest's answer")
		}
	})
}

// TestMissingTarget: with nobody listening, guest connections are closed
// promptly and counted; a service started later serves later connections
// without restarting the guest.
func TestMissingTarget(t *testing.T) {
	forNetworks(t, func(t *testing.T, network string) {
		h := newHost(t)
		path := filepath.Join(h.top, "later.sock")
		h.OK(guest{name: "mt", network: network, devices: vmchannelXML(600, path)}.xml(), "define", "-")
		_, errs, _ := h.Run("", "start", "mt")
		if !strings.Contains(errs, "does not exist yet") {
			t.Errorf("start with an absent target gave no warning: %q", errs)
		}
		h.waitLog("mt", readyLine, bootDeadline)
		// The guest gives up on a silent connection after 30s and says
		// "i/o timeout": a refused connection must end before that.
		out, _ := h.exec("mt", "minivirt-guest request 10.0.2.4:600 anyone", 60*time.Second)
		if strings.Contains(out, "timeout") {
			t.Errorf("a refused connection was left hanging: %q", out)
		}
		if strings.Contains(out, "reply: reply") {
			t.Fatalf("a reply with no service: %q", out)
		}
		if c := h.channelCounters("mt", 600); c.Refused != 1 || c.Active != 0 {
			t.Errorf("counters after a refusal: %+v", c)
		}
		listen(t, path, nil)
		out, rc := h.exec("mt", "minivirt-guest request 10.0.2.4:600 now", 60*time.Second)
		if rc != 0 || !strings.Contains(out, "reply: reply: now") {
			t.Errorf("after the service started: exit %d, %q", rc, out)
		}
	})
}

// TestNotASocket: start refuses a target that exists and is not a socket.
func TestNotASocket(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	h.OK(guest{name: "ns", devices: vmchannelXML(600, "/etc/hostname")}.xml(), "define", "-")
	h.fails("is not a socket", "start", "ns")
	if exists(h.runDirOf("ns")) {
		t.Error("a refused start left its run directory")
	}
}

// TestLimit: connections over maxconnections are closed at once and counted.
func TestLimit(t *testing.T) {
	forNetworks(t, func(t *testing.T, network string) {
		h := newHost(t)
		release := make(chan struct{})
		svc := listen(t, filepath.Join(h.top, "svc.sock"), func(c net.Conn) {
			// The whole request first: a service that closes while the
			// guest still writes resets the guest's connection, and under
			// load a guest's request can come after the release.
			io.Copy(io.Discard, c)
			<-release
			c.Write([]byte("served"))
			c.Close()
		})
		h.boot(guest{name: "lim", network: network, devices: vmchannelXML(600, svc.path, "maxconnections='2'")})
		done := make(chan string, 1)
		go func() {
			out, _ := h.exec("lim", "minivirt-guest parallel 5 10.0.2.4:600", 90*time.Second)
			done <- out
		}()
		deadline := time.Now().Add(60 * time.Second)
		for {
			c := h.channelCounters("lim", 600)
			if c.Total == 5 {
				if c.Active != 2 || c.Refused != 3 {
					t.Errorf("at the limit: %+v", c)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the guest's 5 connections did not all arrive: %+v", c)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if n := svc.accepted.Load(); n != 2 {
			t.Errorf("%d host accepts at a limit of 2", n)
		}
		close(release)
		out := <-done
		if strings.Count(out, "reply: served") != 2 {
			t.Errorf("guest output:\n%s", out)
		}
	})
}

// TestTwoChannelsTwoDomains: two channels in one domain each reach their own
// service, and a second running domain uses the same port for its own.
func TestTwoChannelsTwoDomains(t *testing.T) {
	forNetworks(t, func(t *testing.T, network string) {
		h := newHost(t)
		named := func(name string) func(net.Conn) {
			return func(c net.Conn) {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write([]byte(name + " got " + string(b)))
			}
		}
		a := listen(t, filepath.Join(h.top, "a.sock"), named("A"))
		b := listen(t, filepath.Join(h.top, "b.sock"), named("B"))
		other := listen(t, filepath.Join(h.top, "o.sock"), named("O"))
		h.boot(guest{name: "two", network: network, devices: vmchannelXML(600, a.path) +
			`<channel type='unix'><source mode='connect' path='` + b.path + `'/><target type='guestfwd' address='10.0.2.5' port='601'/></channel>`})
		h.boot(guest{name: "other", network: network, devices: vmchannelXML(600, other.path)})
		for _, tt := range []struct{ dom, addr, want string }{
			{"two", "10.0.2.4:600", "A got x"},
			{"two", "10.0.2.5:601", "B got x"},
			{"other", "10.0.2.4:600", "O got x"},
		} {
			out, rc := h.exec(tt.dom, "minivirt-guest request "+tt.addr+" x", 60*time.Second)
			if rc != 0 || !strings.Contains(out, "reply: "+tt.want) {
				t.Errorf("%s to %s: exit %d, %q; want %q", tt.dom, tt.addr, rc, out, tt.want)
			}
		}
	})
}

// TestVirtioSerial: minivirt binds the socket before QEMU starts; the guest
// answers through /dev/virtio-ports/NAME.
func TestVirtioSerial(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	path := filepath.Join(h.top, "port.sock")
	h.boot(guest{name: "vs", script: "minivirt-guest virtio-echo org.minivirt.test.0 &",
		devices: `<channel type='unix'><source mode='bind' path='` + path + `'/><target type='virtio' name='org.minivirt.test.0'/></channel>`})
	h.waitLog("vs", "virtio-echo: listening", 30*time.Second)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "ping\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "echo: ping\n" {
		t.Errorf("virtio-serial echo: %q, %v", line, err)
	}
	h.OK("", "destroy", "vs")
	if exists(path) {
		t.Error("the bound socket outlived the domain")
	}
}

// TestProxyHeader: the host service tells guests apart by the PROXY v2
// header, parsed with the same library.
func TestProxyHeader(t *testing.T) {
	forNetworks(t, func(t *testing.T, network string) {
		h := newHost(t)
		headers := make(chan *proxyproto.Header, 1)
		svc := listen(t, filepath.Join(h.top, "svc.sock"), func(c net.Conn) {
			defer c.Close()
			br := bufio.NewReader(c)
			hdr, err := proxyproto.Read(br)
			if err != nil {
				t.Errorf("reading the PROXY header: %v", err)
				return
			}
			headers <- hdr
			b, _ := io.ReadAll(br)
			c.Write(b)
		})
		h.boot(guest{name: "px", network: network, devices: vmchannelXML(600, svc.path, "proxy='v2'")})
		out, rc := h.exec("px", "minivirt-guest request 10.0.2.4:600 behind-proxy", 60*time.Second)
		if rc != 0 || !strings.Contains(out, "reply: behind-proxy") {
			t.Fatalf("guest: exit %d, %q", rc, out)
		}
		hdr := <-headers
		src, dst, ok := hdr.TCPAddrs()
		if !ok || src.IP.String() != "10.0.2.15" || dst.String() != "10.0.2.4:600" {
			t.Errorf("PROXY addresses %v -> %v", src, dst)
		}
		// Only minivirt's own network sees the guest's port; QEMU's guestfwd
		// does not tell it, so that header says port 0.
		if wantPort := network != "slirp"; ok && (src.Port != 0) != wantPort {
			t.Errorf("PROXY source port %d on %s", src.Port, network)
		}
		tlvs, _ := hdr.TLVs()
		got := map[proxyproto.PP2Type]string{}
		for _, tlv := range tlvs {
			got[tlv.Type] = string(tlv.Value)
		}
		var st struct{ UUID string }
		json.Unmarshal([]byte(h.OK("", "status", "px", "-o", "json")), &st)
		if got[vmchannel.TLVDomainName] != "px" || got[vmchannel.TLVDomainUUID] != st.UUID {
			t.Errorf("PROXY TLVs %q; want name px, uuid %s", got, st.UUID)
		}
	})
}

// TestIsolation: a vmchannel-only domain on QEMU's user network (restrict=on)
// cannot reach the host through the gateway; an explicit
// <interface type='user'> can. (TestNetstackIsolation covers minivirt's own.)
func TestIsolation(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	_, port := listenTCP(t, func(c net.Conn) {
		io.ReadAll(c)
		c.Write([]byte("host tcp"))
		c.Close()
	})
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	probe := fmt.Sprintf("minivirt-guest request 10.0.2.2:%d probe", port)

	h.boot(guest{name: "iso", network: "slirp", devices: vmchannelXML(600, svc.path)}) // restrict=on
	if out, rc := h.exec("iso", probe, 60*time.Second); rc == 0 || strings.Contains(out, "host tcp") {
		t.Errorf("an isolated guest reached the host's loopback: exit %d, %q", rc, out)
	}
	if out, rc := h.exec("iso", "minivirt-guest request 10.0.2.4:600 still", 60*time.Second); rc != 0 || !strings.Contains(out, "reply: still") {
		t.Errorf("the vmchannel of an isolated guest: exit %d, %q", rc, out)
	}
	h.OK("", "destroy", "iso")

	h.boot(guest{name: "nat", devices: `<interface type='user'/>` + vmchannelXML(600, svc.path)})
	if out, rc := h.exec("nat", probe, 60*time.Second); rc != 0 || !strings.Contains(out, "host tcp") {
		t.Errorf("a guest with <interface type='user'> did not reach the host: exit %d, %q", rc, out)
	}
}

// TestChangesWhileRunning: with --config, vmchannel add changes the
// definition of a running domain and says the change waits for the next
// start; without a network to change live, --live says so.
func TestChangesWhileRunning(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	h.boot(guest{name: "chg"})
	h.fails("started without a network", "vmchannel", "add", "chg", "--port", "700", "--path", svc.path)
	out, _, code := h.Run("", "vmchannel", "add", "chg", "--port", "700", "--path", svc.path, "--config")
	if code != 0 || !strings.Contains(out, "takes effect at the next start") {
		t.Errorf("vmchannel add --config while running: exit %d, %q", code, out)
	}
	if !strings.Contains(h.OK("", "dumpxml", "chg"), `port="700"`) {
		t.Error("the added vmchannel is not in the definition")
	}
	if strings.Contains(h.OK("", "vmchannel", "list", "chg"), "700") {
		t.Error("vmchannel list shows a channel the running domain does not have")
	}
	if out, _ := h.exec("chg", "minivirt-guest request 10.0.2.4:700 early", 60*time.Second); strings.Contains(out, "reply: early") {
		t.Error("a vmchannel added while running worked before the next start")
	}
	h.OK("", "destroy", "chg")
	h.OK("", "start", "chg")
	h.waitLogCount("chg", readyLine, 2, bootDeadline)
	if out, rc := h.exec("chg", "minivirt-guest request 10.0.2.4:700 next", 60*time.Second); rc != 0 || !strings.Contains(out, "reply: next") {
		t.Errorf("after the next start: exit %d, %q", rc, out)
	}
	h.OK("", "destroy", "chg")
}

// TestSupervisorFallback: with the supervisor gone, new guest connections
// still reach the host through the helper's own relay.
func TestSupervisorFallback(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	// Without the supervisor the helper dials the target itself, as the
	// user QEMU runs as (minivirt-qemu when the test runs as root): the
	// service lets it.
	if err := os.Chmod(svc.path, 0o666); err != nil {
		t.Fatal(err)
	}
	h.boot(guest{name: "fb", network: "slirp", devices: vmchannelXML(600, svc.path)}) // the helper's own relay
	st := h.status("fb")
	if out, rc := h.exec("fb", "minivirt-guest request 10.0.2.4:600 before", 60*time.Second); rc != 0 || !strings.Contains(out, "reply: before") {
		t.Fatalf("before: %d %q", rc, out)
	}
	killPid(st.SupervisorPID)
	waitDead(t, st.SupervisorPID, 10*time.Second)
	if out, rc := h.exec("fb", "minivirt-guest parallel 3 10.0.2.4:600", 60*time.Second); rc != 0 || strings.Count(out, "reply: reply: hello") != 3 {
		t.Errorf("after the supervisor died: exit %d:\n%s", rc, out)
	}
	if u := h.status("fb"); u.Supervised || u.State != "running" {
		t.Errorf("status: %+v", u)
	}
	h.OK("", "destroy", "fb")
}
