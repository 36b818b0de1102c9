// Package sixlines is a test rig in six lines, using minivirt's public API
// alone (this package imports nothing of minivirt but pkg/rig).
package sixlines

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/rig"
)

// TestRoundTrip boots the tiny guest, which sends "ping" to 10.0.2.4:600;
// the host answers "pong", and the guest prints what it got. Six lines.
func TestRoundTrip(t *testing.T) {
	vm := rig.Run(t, "minivirt-guest request 10.0.2.4:600 ping", rig.Serve(600, func(c net.Conn) {
		io.ReadAll(c)
		c.Write([]byte("pong"))
		c.Close()
	}))
	vm.ExpectConsole(t, "reply: pong")
}

// TestDialGuest: the host reaches a service in the guest (busybox httpd)
// through DialGuest.
func TestDialGuest(t *testing.T) {
	vm := rig.Run(t, "mkdir -p /www && echo hello-from-the-guest > /www/index.html && httpd -p 8080 -h /www && sleep 600")
	vm.ExpectConsole(t, "minivirt-guest: ready")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		c, err := vm.DialGuest(ctx, 8080)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "GET /index.html HTTP/1.0\r\n\r\n")
		body, _ := io.ReadAll(c)
		c.Close()
		if strings.Contains(string(body), "hello-from-the-guest") {
			return
		}
		select { // httpd may not listen yet: the guest's port refused
		case <-ctx.Done():
			t.Fatalf("no answer from the guest's httpd: %q", body)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// TestRoundTripRestored is TestRoundTrip with rig.Restore: the guest boots
// once, is saved when ready, and the test's guest is restored from the save.
func TestRoundTripRestored(t *testing.T) {
	vm := rig.Run(t, "minivirt-guest request 10.0.2.4:600 ping", rig.Restore(), rig.Serve(600, func(c net.Conn) {
		io.ReadAll(c)
		c.Write([]byte("pong"))
		c.Close()
	}))
	vm.ExpectConsole(t, "reply: pong")
}
