// Package qmptest serves QMP on a connection, the way QEMU does, for tests
// that need a monitor QEMU cannot be made to be: one that sends a reply of a
// given size, never answers a command, or goes away.
package qmptest

import (
	"encoding/json"
	"fmt"
	"net"
)

// Greeting is what QEMU 7.2 sends a new monitor client.
const Greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": []}}`

// Session is one command's view of the monitor connection.
type Session struct {
	c  net.Conn
	id json.RawMessage
}

// Reply answers the command with value as its "return", echoing its id.
func (s Session) Reply(value string) {
	id := string(s.id)
	if id == "" {
		id = "null"
	}
	fmt.Fprintf(s.c, `{"return": %s, "id": %s}`+"\n", value, id)
}

// Error answers the command with a QMP error, echoing its id.
func (s Session) Error(class, desc string) {
	id := string(s.id)
	if id == "" {
		id = "null"
	}
	fmt.Fprintf(s.c, `{"error": {"class": %q, "desc": %q}, "id": %s}`+"\n", class, desc, id)
}

// Event sends an event; data is a JSON object.
func (s Session) Event(name, data string) { Event(s.c, name, data) }

// Event writes an event to a monitor connection, in one write: it may come
// from outside a command, beside a Session's replies.
func Event(c net.Conn, name, data string) {
	fmt.Fprintf(c, `{"event": %q, "data": %s, "timestamp": {"seconds": 1, "microseconds": 0}}`+"\n", name, data)
}

// Serve greets the client on c and hands each command to handle, which
// answers (or not) through the Session; handle returns false to end the
// session. Serve returns when the client goes or handle ends it.
func Serve(c net.Conn, handle func(command string, s Session) bool) {
	fmt.Fprintln(c, Greeting)
	dec := json.NewDecoder(c)
	for {
		var cmd struct {
			Execute string
			ID      json.RawMessage
		}
		if dec.Decode(&cmd) != nil {
			return
		}
		s := Session{c: c, id: cmd.ID}
		if cmd.Execute == "qmp_capabilities" {
			s.Reply(`{}`)
			continue
		}
		if !handle(cmd.Execute, s) {
			return
		}
	}
}
