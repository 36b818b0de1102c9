// Package qgatest serves the guest agent's protocol on a connection, the
// way qemu-ga does, for tests that need an agent without a guest: one that
// answers as a typical guest's does, leaves stale bytes in the channel, or
// never answers.
package qgatest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
)

// Session is one command's view of the channel.
type Session struct{ c net.Conn }

// Reply answers the command with value, a JSON value, as its "return".
func (s Session) Reply(value string) {
	fmt.Fprintf(s.c, `{"return": %s}`+"\n", value)
}

// Error answers the command with an error reply.
func (s Session) Error(class, desc string) {
	fmt.Fprintf(s.c, `{"error": {"class": %q, "desc": %q}}`+"\n", class, desc)
}

// Write writes raw bytes to the channel, as a guest may (stale replies,
// half of one).
func (s Session) Write(raw string) { io.WriteString(s.c, raw) }

// Close closes the channel, as QEMU does when it exits.
func (s Session) Close() { s.c.Close() }

// Channel serves the clients of l one at a time, each until serve
// returns, then closes it: as QEMU serves the socket of a virtio-serial
// port, where a second client waits, unanswered, until the first goes. It
// returns when l is closed.
func Channel(l net.Listener, serve func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		serve(c)
		c.Close()
	}
}

// Serve reads commands from c and answers guest-sync and
// guest-sync-delimited itself (the latter after the 0xFF sentinel byte);
// every other command goes to handle with its arguments (null when it has
// none), which answers through the Session, or not at all. A 0xFF byte
// from the client discards what it sent of a command so far, as qemu-ga's
// parser resets on it. Serve returns when c ends, a command is over 1 MiB,
// or handle returns false.
func Serve(c net.Conn, handle func(command string, args json.RawMessage, s Session) bool) {
	r := bufio.NewReader(c)
	s := Session{c}
	var buf []byte
	for {
		b, err := r.ReadByte()
		if err != nil || len(buf) > 1<<20 {
			return
		}
		switch {
		case b == 0xFF:
			buf = buf[:0]
			continue
		case len(buf) == 0 && (b == ' ' || b == '\n' || b == '\r' || b == '\t'):
			continue
		}
		buf = append(buf, b)
		if b != '}' || !json.Valid(buf) {
			continue
		}
		var cmd struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
		}
		err = json.Unmarshal(buf, &cmd)
		buf = buf[:0]
		switch {
		case err != nil || cmd.Execute == "":
			s.Error("GenericError", "Invalid JSON syntax")
			continue
		case cmd.Execute == "guest-sync-delimited" || cmd.Execute == "guest-sync":
			var args struct {
				ID json.RawMessage `json:"id"`
			}
			json.Unmarshal(cmd.Arguments, &args)
			if cmd.Execute == "guest-sync-delimited" {
				s.Write("\xff")
			}
			s.Reply(string(args.ID))
			continue
		}
		if cmd.Arguments == nil {
			cmd.Arguments = json.RawMessage("null")
		}
		if !handle(cmd.Execute, cmd.Arguments, s) {
			return
		}
	}
}

// What Guest answers: a Debian 12 guest named HostName with one user, one
// filesystem, and lo and eth0 (MAC, with Address/24 and an IPv6
// link-local address).
const (
	HostName   = "fakeguest"
	PrettyName = "Debian GNU/Linux 12 (bookworm)"
	UserName   = "alice"
	MAC        = "52:54:00:12:34:56"
	Address    = "10.0.2.15"
)

// Guest answers the information commands a typical Linux guest's qemu-ga
// has (guest-info, guest-ping, guest-get-osinfo, guest-get-host-name,
// guest-get-users, guest-get-fsinfo, guest-network-get-interfaces) and
// reports whether command was one of them; it answers nothing else.
func Guest(command string, s Session) bool {
	reply, ok := guestReplies[command]
	if ok {
		s.Reply(reply)
	}
	return ok
}

var guestReplies = map[string]string{
	"guest-ping": `{}`,
	"guest-info": `{"version": "7.2.0", "supported_commands": []}`,
	"guest-get-osinfo": `{"name": "Debian GNU/Linux", "kernel-release": "6.1.0-18-amd64", "version": "12 (bookworm)",
		"pretty-name": "` + PrettyName + `", "version-id": "12", "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)",
		"machine": "x86_64", "id": "debian"}`,
	"guest-get-host-name": `{"host-name": "` + HostName + `"}`,
	"guest-get-users":     `[{"user": "` + UserName + `", "login-time": 1700000000.25}]`,
	"guest-get-fsinfo": `[{"name": "vda1", "total-bytes": 2040373248, "mountpoint": "/", "disk": [{"serial": "minivirt-disk",
		"bus-type": "virtio", "bus": 0, "unit": 0, "pci-controller": {"bus": 1, "slot": 0, "domain": 0, "function": 0},
		"dev": "/dev/vda1", "target": 0}], "used-bytes": 981962752, "type": "ext4"}]`,
	"guest-network-get-interfaces": `[{"name": "lo", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8},
		{"ip-address-type": "ipv6", "ip-address": "::1", "prefix": 128}], "hardware-address": "00:00:00:00:00:00"},
		{"name": "eth0", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "` + Address + `", "prefix": 24},
		{"ip-address-type": "ipv6", "ip-address": "fe80::5054:ff:fe12:3456", "prefix": 64}], "hardware-address": "` + MAC + `"}]`,
}
