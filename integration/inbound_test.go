package integration

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// httpdScript runs busybox httpd on the guest's port 8080.
const httpdScript = "mkdir -p /www && echo hello-from-the-guest > /www/index.html && httpd -p 8080 -h /www && echo httpd-up"

// freePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// passiveOpens is the guest's count of accepted TCP connections.
func (h *host) passiveOpens(name string) int {
	h.t.Helper()
	out, rc := h.exec(name, `awk '/^Tcp:/{n++} n==2{print $7; exit}' /proc/net/snmp`, time.Minute)
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if rc != 0 || err != nil {
		h.t.Fatalf("reading the guest's TCP counters: exit %d, %q", rc, out)
	}
	return n
}

// getConcurrently makes n HTTP requests at once through dial and checks
// every answer.
func getConcurrently(t *testing.T, what string, n int, dial func() (net.Conn, error)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dial()
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(time.Minute))
			io.WriteString(c, "GET /index.html HTTP/1.0\r\n\r\n")
			body, err := io.ReadAll(bufio.NewReader(c))
			if err != nil || !strings.Contains(string(body), "hello-from-the-guest") {
				errs <- fmt.Errorf("answer %q, %v", body, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("%s: %v", what, err)
	}
}

// TestInboundForwards: a guest service (busybox httpd) is reached from the
// host through a Unix socket and through a TCP port on 127.0.0.1, 8
// concurrent requests giving 8 accepts in the guest, on both networks where
// the form exists.
func TestInboundForwards(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
	sock := filepath.Join(h.top, "web.sock")
	tcp := freePort(t)
	forwards := fmt.Sprintf(`<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1'>`+
		`<forward port='8080' path='%s'/><forward port='8080' listen='127.0.0.1:%d'/></vmchannels></metadata>`, sock, tcp)
	// minivirt's own network on both backends: vhost-user (the default)
	// and stream.
	for _, backend := range []string{"", "stream"} {
		h.boot(guest{name: "in", top: forwards, backend: backend, script: httpdScript, devices: vmchannelXML(600, svc.path)})
		h.waitLog("in", "httpd-up", time.Minute)
		for _, form := range []struct {
			name string
			dial func() (net.Conn, error)
		}{
			{"netstack unix " + backend, func() (net.Conn, error) { return net.Dial("unix", sock) }},
			{"netstack tcp " + backend, func() (net.Conn, error) { return net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tcp)) }},
		} {
			before := h.passiveOpens("in")
			getConcurrently(t, form.name, 8, form.dial)
			if n := h.passiveOpens("in") - before; n != 8 {
				t.Errorf("%s: the guest accepted %d connections for 8 requests", form.name, n)
			}
		}
		var st struct {
			Forwards []struct {
				Host  string `json:"host"`
				Total uint64 `json:"total"`
			} `json:"forwards"`
		}
		json.Unmarshal([]byte(h.OK("", "status", "in", "-o", "json")), &st)
		if len(st.Forwards) != 2 || st.Forwards[0].Total != 8 || st.Forwards[1].Total != 8 {
			t.Errorf("status forwards: %+v; want two with 8 connections each", st.Forwards)
		}
		h.OK("", "destroy", "in")
		if exists(sock) {
			t.Error("the forward's socket outlived the domain")
		}
	}

	// QEMU's user network: libvirt's <portForward>, through hostfwd.
	tcp2 := freePort(t)
	nat := fmt.Sprintf(`<interface type='user'><portForward proto='tcp' address='127.0.0.1'><range start='%d' to='8080'/></portForward></interface>`, tcp2)
	h.boot(guest{name: "slirpin", script: httpdScript, devices: nat})
	h.waitLog("slirpin", "httpd-up", time.Minute)
	before := h.passiveOpens("slirpin")
	getConcurrently(t, "slirp tcp", 8, func() (net.Conn, error) { return net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tcp2)) })
	if n := h.passiveOpens("slirpin") - before; n != 8 {
		t.Errorf("slirp tcp: the guest accepted %d connections for 8 requests", n)
	}
	h.OK("", "destroy", "slirpin")
	// The Unix form needs minivirt's own network: said at define.
	bad := guest{name: "bad", top: `<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1'><forward port='80' path='/run/x.sock'/></vmchannels></metadata>`, devices: `<interface type='user'/>`}
	badFile := filepath.Join(h.top, "bad.xml")
	os.WriteFile(badFile, []byte(bad.xml()), 0o644)
	h.fails("a Unix-socket forward needs minivirt's own network", "define", badFile)
}

// TestLiveChanges: on a running netstack domain a vmchannel added live
// serves the guest's next connection without a restart, and once removed
// live it is refused; a forward to a guest port nobody listens on closes the
// host's connection at once; and nothing listens on a host TCP port unless
// asked (read from /proc/net/tcp).
func TestLiveChanges(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		h := newHost(t)
		svc := listen(t, filepath.Join(h.top, "svc.sock"), nil)
		svc2 := listen(t, filepath.Join(h.top, "svc2.sock"), nil)
		h.boot(guest{name: "live", backend: map[string]string{"vhost-user": "", "stream": "stream"}[backend], devices: vmchannelXML(600, svc.path)})

		out := h.OK("", "vmchannel", "add", "live", "--port", "700", "--path", svc2.path, "--live")
		if !strings.Contains(out, "live") {
			t.Errorf("vmchannel add --live printed %q", out)
		}
		if out, rc := h.exec("live", "minivirt-guest request 10.0.2.4:700 added", time.Minute); rc != 0 || !strings.Contains(out, "reply: reply: added") {
			t.Errorf("a vmchannel added live: exit %d, %q", rc, out)
		}
		if strings.Contains(h.OK("", "dumpxml", "live"), `port="700"`) {
			t.Error("--live alone changed the definition")
		}
		h.OK("", "vmchannel", "remove", "live", "--port", "700", "--live")
		if out, rc := h.exec("live", "minivirt-guest request 10.0.2.4:700 removed", time.Minute); rc == 0 {
			t.Errorf("a vmchannel removed live still answered: %q", out)
		}

		// Nothing listens on the host's TCP: the domain asked for no TCP forward.
		st := h.status("live")
		if ports := tcpListeners(t, st.QEMUPID, st.SupervisorPID); len(ports) != 0 {
			t.Errorf("TCP listeners nobody asked for: %v", ports)
		}
		// A forward to a port nobody listens on in the guest: closed at once.
		dead := filepath.Join(h.top, "dead.sock")
		h.OK("", "port", "add", "live", "--guest-port", "9", "--path", dead, "--live")
		c, err := net.Dial("unix", dead)
		if err != nil {
			t.Fatal(err)
		}
		// A forward left open would run into this deadline: the end of the
		// stream must come first.
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || !(errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
			t.Errorf("a forward to a closed guest port: read %d, %v; want the end of the stream", n, err)
		}
		c.Close()
		// A TCP forward asked for: exactly that port listens.
		tcp := freePort(t)
		h.OK("", "port", "add", "live", "--guest-port", "22", "--listen", strconv.Itoa(tcp), "--live")
		if ports := tcpListeners(t, st.QEMUPID, st.SupervisorPID); len(ports) != 1 || ports[0] != tcp {
			t.Errorf("TCP listeners %v; want only the asked %d", ports, tcp)
		}
		h.OK("", "port", "remove", "live", "--guest-port", "22", "--live")
		if ports := tcpListeners(t, st.QEMUPID, st.SupervisorPID); len(ports) != 0 {
			t.Errorf("TCP listeners left after remove: %v", ports)
		}
		h.OK("", "destroy", "live")
	})
}

// tcpListeners returns the local ports of the listening TCP sockets (IPv4
// and IPv6) that the processes pids hold, read from /proc/net/tcp{,6} and
// /proc/PID/fd.
func tcpListeners(t *testing.T, pids ...int) []int {
	t.Helper()
	inodes := map[string]bool{}
	for _, pid := range pids {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
			if inode, ok := strings.CutPrefix(target, "socket:["); ok {
				inodes[strings.TrimSuffix(inode, "]")] = true
			}
		}
	}
	var ports []int
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, _ := os.ReadFile(table)
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] { // 0A: LISTEN
				continue
			}
			_, hexPort, _ := strings.Cut(f[1], ":")
			p, _ := strconv.ParseInt(hexPort, 16, 32)
			ports = append(ports, int(p))
		}
	}
	return ports
}
