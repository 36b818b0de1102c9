// Package fakeqemu is a fake QEMU for tests: a test binary doubles as one
// when a domain names it as its <emulator> and its TestMain calls Main
// when Env is set. The supervisor runs it with QEMU's argv; it serves QMP
// on the monitor descriptor it inherits and, in mode "guest", plays a
// guest on minivirt's own network. The real QEMU cannot be made to send a
// 1 MiB reply to order, never answer one command, or drop its monitor, and
// needs a guest to boot; everything around the fake is the real engine
// and supervisor.
//
// Env picks the fake's behaviour (a domain passes it as a
// <qemu:commandline> variable, as a user's would):
//
//	normal: answers every command; system_powerdown leads to a SHUTDOWN event
//	drop:   after cont, closes the monitor and stops listening for a new one
//	exit:   refuses its command line (exit status 3)
//	guest:  normal, and a guest at 10.0.2.15 on the -netdev stream socket
//	        (usernettest) that listens on GuestPort only
//	agent:  normal, and a guest agent (qgatest.Guest's answers) on the
//	        virtio-serial port org.qemu.guest_agent.0; its guest-shutdown
//	        leads to a SHUTDOWN event (powerdown, halt) or a RESET (reboot)
//
// In every other mode the agent's channel, when the domain has one, is a
// listener nobody accepts on: a guest without qemu-guest-agent.
package fakeqemu

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/qga/qgatest"
	"github.com/minivirt/minivirt/pkg/qmp/qmptest"
	"github.com/minivirt/minivirt/pkg/usernet/usernettest"
	"github.com/minivirt/minivirt/pkg/vhostuser/vhostusertest"
)

// Env is the variable that makes a test binary the fake, and names its mode.
const Env = "MINIVIRT_FAKE_QEMU"

// GuestPort is the one port the guest of mode "guest" listens on. Its
// service sends Greeting at once, then reads until end of stream, sends
// back what it read, and closes.
const (
	GuestPort = 7
	Greeting  = "hello from the fake guest\n"
)

// Main runs the fake with QEMU's argv (without argv[0]) and returns its exit
// status.
func Main(mode string, args []string) int {
	if mode == "exit" { // a QEMU that refuses its command line
		fmt.Fprintln(os.Stderr, "fake QEMU: refusing to start")
		return 3
	}
	if mode == "guest" {
		if err := serveGuest(args); err != nil {
			fmt.Fprintln(os.Stderr, "fake QEMU: guest:", err)
			return 1
		}
	} else if path := valueAfter(args, "-chardev", "id=charnet0,path="); path != "" {
		// QEMU connects its vhost-user NIC as it starts, guest or not.
		if _, err := connectNIC(path); err != nil {
			fmt.Fprintln(os.Stderr, "fake QEMU: vhost-user:", err)
			return 1
		}
	}
	if mode == "agent" {
		if err := serveAgent(args); err != nil {
			fmt.Fprintln(os.Stderr, "fake QEMU: agent:", err)
			return 1
		}
	}
	fd := numberAfter(args, "-chardev", "socket,id=monitor,fd=")
	l, err := net.FileListener(os.NewFile(uintptr(fd), "monitor"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake QEMU: no monitor:", err)
		return 1
	}
	for {
		c, err := l.Accept()
		monitor.Lock()
		monitor.c = c
		monitor.Unlock()
		if err != nil && mode == "drop" {
			select {} // a QEMU whose monitor is gone: only SIGKILL ends it
		}
		if err != nil {
			return 1
		}
		if quit := serveQMP(c, mode, l, args); quit {
			return 0
		}
	}
}

// numberAfter finds the value of option that holds marker and returns the
// number that follows marker there, or -1.
func numberAfter(args []string, option, marker string) int {
	for i, a := range args {
		if a != option || i+1 == len(args) {
			continue
		}
		if _, rest, ok := strings.Cut(args[i+1], marker); ok {
			num, _, _ := strings.Cut(rest, ",")
			if n, err := strconv.Atoi(num); err == nil {
				return n
			}
		}
	}
	return -1
}

// connectNIC connects to the vhost-user back-end at path as QEMU does and
// drives its device as a guest's driver that takes no offloads.
func connectNIC(path string) (*vhostusertest.Driver, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	return vhostusertest.Connect(c, vhostusertest.Options{})
}

// valueAfter finds the value of option that holds marker and returns what
// follows marker there, unescaped (",," is a comma), or "".
func valueAfter(args []string, option, marker string) string {
	for i, a := range args {
		if a != option || i+1 == len(args) {
			continue
		}
		if _, rest, ok := strings.Cut(args[i+1], marker); ok {
			return strings.ReplaceAll(rest, ",,", ",")
		}
	}
	return ""
}

// serveGuest starts the guest on QEMU's NIC (the vhost-user socket of
// "-chardev socket,id=charnet0,path=P", or the descriptor of "-netdev
// stream,...,addr.str=N") with the MTU of the device's host_mtu, and its
// service on GuestPort. It runs until the process exits.
func serveGuest(args []string) error {
	mtu := numberAfter(args, "-device", "host_mtu=")
	if mtu < 0 {
		return fmt.Errorf("no host_mtu in %q", args)
	}
	var conn net.Conn
	if path := valueAfter(args, "-chardev", "id=charnet0,path="); path != "" {
		// vhost-user: the guest's driver on a memfd of its own, and its
		// frames as -netdev stream carries them for the guest stack.
		drv, err := connectNIC(path)
		if err != nil {
			return fmt.Errorf("vhost-user: %w", err)
		}
		if conn, err = drv.Stream(); err != nil {
			return err
		}
	} else {
		fd := numberAfter(args, "-netdev", "addr.str=")
		if fd < 0 {
			return fmt.Errorf("no -netdev stream socket or vhost-user chardev in %q", args)
		}
		f := os.NewFile(uintptr(fd), "netdev")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			return err
		}
		conn = c
	}
	guest, err := usernettest.Start(conn, uint32(mtu))
	if err != nil {
		return err
	}
	l, err := guest.Listen(GuestPort)
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go Service(c)
		}
	}()
	return nil
}

// Service is GuestPort's service on one accepted connection: it sends
// Greeting, reads until end of stream, sends back what it read, and closes.
func Service(c net.Conn) {
	defer c.Close()
	io.WriteString(c, Greeting)
	if in, err := io.ReadAll(c); err == nil {
		c.Write(in)
	}
}

// CheckEcho is a client of Service on c, which has CloseWrite, within a
// deadline: it reads the Greeting, sends payload and half-closes c while it
// reads what comes back until the service closes, and checks that it is
// payload. It returns what is wrong, or nil, and closes c.
func CheckEcho(c net.Conn, payload []byte, within time.Duration) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(within))
	greeting := make([]byte, len(Greeting))
	if _, err := io.ReadFull(c, greeting); err != nil || string(greeting) != Greeting {
		return fmt.Errorf("greeted with %q (%v), want %q", greeting, err, Greeting)
	}
	sent := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		sent <- err
	}()
	back, err := io.ReadAll(c)
	if serr := <-sent; serr != nil {
		return fmt.Errorf("sending: %w", serr)
	}
	if err != nil || !bytes.Equal(back, payload) {
		return fmt.Errorf("the echo after end of stream: %d bytes (want %d), %v", len(back), len(payload), err)
	}
	return nil
}

// CheckRefusal checks the outcome (c, err) of a connection, begun at began,
// to a port of the guest that nobody listens on: it must have failed
// within two seconds, wrapping refused and saying "connection refused" and
// which guest port. It returns what is wrong, or nil; a connection that
// was made is closed.
func CheckRefusal(c net.Conn, err error, began time.Time, refused error, port uint16) error {
	took := time.Since(began)
	switch {
	case err == nil:
		c.Close()
		return errors.New("a connection to a port nobody listens on succeeded")
	case took > 2*time.Second:
		return fmt.Errorf("the refusal took %v: %w", took, err)
	case !errors.Is(err, refused) || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), fmt.Sprintf("guest port %d", port)):
		return fmt.Errorf("the refusal said %w", err)
	}
	return nil
}

// monitor is the monitor client being served, for the agent's events.
var monitor struct {
	sync.Mutex
	c net.Conn
}

// event sends a QMP event to the monitor client, if there is one.
func event(name, data string) {
	monitor.Lock()
	defer monitor.Unlock()
	if monitor.c != nil {
		qmptest.Event(monitor.c, name, data)
	}
}

// serveAgent serves the guest agent on the listener QEMU was given for the
// virtio-serial port named domain.AgentChannel (-device
// virtserialport,...,chardev=ID,name=... and -chardev socket,id=ID,fd=N),
// one client at a time, as QEMU does. It runs until the process exits.
func serveAgent(args []string) error {
	fd := -1
	for i, a := range args {
		if a != "-device" || i+1 == len(args) || !strings.HasSuffix(args[i+1], ",name="+domain.AgentChannel) {
			continue
		}
		if _, rest, ok := strings.Cut(args[i+1], ",chardev="); ok {
			id, _, _ := strings.Cut(rest, ",")
			fd = numberAfter(args, "-chardev", "socket,id="+id+",fd=")
		}
	}
	if fd < 0 {
		return fmt.Errorf("no virtserialport %s in %q", domain.AgentChannel, args)
	}
	l, err := net.FileListener(os.NewFile(uintptr(fd), "agent"))
	if err != nil {
		return err
	}
	go qgatest.Channel(l, func(c net.Conn) { qgatest.Serve(c, agentCommand) })
	return nil
}

// agentCommand answers one guest agent command as a Linux guest's qemu-ga.
func agentCommand(command string, args json.RawMessage, s qgatest.Session) bool {
	if command == "guest-shutdown" {
		var a struct{ Mode string }
		json.Unmarshal(args, &a)
		switch a.Mode {
		case "", "powerdown", "halt":
			event("SHUTDOWN", `{"guest": true, "reason": "guest-shutdown"}`)
		case "reboot":
			event("RESET", `{"guest": true, "reason": "guest-reset"}`)
		default:
			s.Error("GenericError", "Parameter 'mode' does not accept value '"+a.Mode+"'")
		}
		return true
	}
	if !qgatest.Guest(command, s) {
		s.Error("CommandNotFound", "The command "+command+" has not been found")
	}
	return true
}

// cpusFast is query-cpus-fast's reply: one vCPU, the fake's main thread.
func cpusFast() string {
	return fmt.Sprintf(`[{"cpu-index": 0, "thread-id": %d, "qom-path": "/machine/unattached/device[0]", "target": "x86_64", "props": {"core-id": 0, "thread-id": 0, "node-id": 0, "socket-id": 0}}]`, os.Getpid())
}

// BalloonUsed is the part of the memory (-m, in MiB) the fake's guest
// keeps when it has a balloon: query-balloon says actual = memory - BalloonUsed MiB.
const BalloonUsed = 16

// balloon is the balloon's size in bytes, or false without a
// virtio-balloon device.
func balloon(args []string) (uint64, bool) {
	has := false
	mib := uint64(0)
	for i, a := range args {
		if a == "-device" && i+1 < len(args) && strings.HasPrefix(args[i+1], "virtio-balloon") {
			has = true
		}
		if a == "-m" && i+1 < len(args) {
			n, _, _ := strings.Cut(args[i+1], ",")
			mib, _ = strconv.ParseUint(n, 10, 64)
		}
	}
	if !has || mib < BalloonUsed {
		return 0, false
	}
	return (mib - BalloonUsed) << 20, true
}

// BlockStats returns the counters query-blockstats reports for the i-th
// -drive with an id: i+1 read requests of 512 bytes, 2*(i+1) writes of
// 4096.
func BlockStats(i int) (rdReqs, rdBytes, wrReqs, wrBytes uint64) {
	n := uint64(i + 1)
	return n, n * 512, 2 * n, 2 * n * 4096
}

// blockStats is query-blockstats' reply for every -drive with an id,
// named as QEMU names a drive made by -drive if=none (device = the drive's
// id, qdev = the path of the device using it, here its id without
// "drive-").
func blockStats(args []string) string {
	var out []string
	for i, a := range args {
		if a != "-drive" || i+1 == len(args) {
			continue
		}
		id := ""
		for _, opt := range strings.Split(args[i+1], ",") {
			if v, ok := strings.CutPrefix(opt, "id="); ok {
				id = v
			}
		}
		if id == "" {
			continue
		}
		rr, rb, wr, wb := BlockStats(len(out))
		dev := strings.TrimPrefix(id, "drive-")
		out = append(out, fmt.Sprintf(`{"device": %q, "qdev": "/machine/peripheral/%s/virtio-backend", "node-name": "#block%d", "stats": {"rd_operations": %d, "rd_bytes": %d, "wr_operations": %d, "wr_bytes": %d, "flush_operations": 0, "rd_total_time_ns": 0}}`,
			id, dev, 100+len(out), rr, rb, wr, wb))
	}
	return "[" + strings.Join(out, ", ") + "]"
}

// serveQMP answers one monitor client; it reports whether QEMU must exit.
func serveQMP(c net.Conn, mode string, l net.Listener, args []string) (quit bool) {
	defer c.Close()
	qmptest.Serve(c, func(cmd string, s qmptest.Session) bool {
		switch cmd {
		case "hang": // never answered
		case "query-qmp-schema":
			s.Reply(`[{"blob": "` + strings.Repeat("x", 1<<20) + `"}]`)
		case "query-status":
			s.Reply(`{"running": true, "status": "running"}`)
		case "system_powerdown":
			s.Reply(`{}`)
			s.Event("SHUTDOWN", `{"guest": true, "reason": "guest-shutdown"}`)
			s.Event("STOP", `{}`)
		case "quit":
			s.Reply(`{}`)
			s.Event("SHUTDOWN", `{"guest": false, "reason": "host-qmp-quit"}`)
			quit = true
			return false
		case "query-cpus-fast":
			s.Reply(cpusFast())
		case "query-balloon":
			if bytes, ok := balloon(args); ok {
				s.Reply(fmt.Sprintf(`{"actual": %d}`, bytes))
			} else {
				s.Error("DeviceNotActive", "No balloon device has been activated")
			}
		case "query-blockstats":
			s.Reply(blockStats(args))
		case "cont":
			s.Reply(`{}`)
			s.Event("RESUME", `{}`)
			if mode == "drop" {
				l.Close()
				return false
			}
		default:
			s.Reply(`{}`)
		}
		return true
	})
	return quit
}
