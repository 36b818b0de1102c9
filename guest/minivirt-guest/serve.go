package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// The benchmark's services, served inside the guest: the same clients
// (latency, bulk, bulkin, rate) pointed at 127.0.0.1 measure the guest's
// own loopback, which no network path can beat.

// servingEnv marks the detached server that serve starts: its listeners
// are descriptors 3 onwards, in the order of its arguments.
const servingEnv = "MINIVIRT_GUEST_SERVING"

// connTimeout bounds every served connection, as the clients bound theirs.
const connTimeout = 5 * time.Minute

// services are what serve offers, each speaking as the benchmark's host
// services do.
var services = map[string]func(net.Conn) error{
	// echo reads one byte and sends it back.
	"echo": func(c net.Conn) error {
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil {
			return err
		}
		_, err := c.Write(one[:])
		return err
	},
	// sink reads until the client half-closes and answers the count.
	"sink": func(c net.Conn) error {
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			return err
		}
		_, err = fmt.Fprint(c, n)
		return err
	},
	// source reads how many bytes the client wants, then sends them.
	"source": func(c net.Conn) error {
		var n int64
		if _, err := fmt.Fscan(bufio.NewReader(c), &n); err != nil {
			return err
		}
		if n < 0 {
			return fmt.Errorf("source: %d bytes asked", n)
		}
		buf := make([]byte, 64<<10)
		for n > 0 {
			k := min(int64(len(buf)), n)
			if _, err := c.Write(buf[:k]); err != nil {
				return err
			}
			n -= k
		}
		return nil
	},
}

// serve listens on every SERVICE=ADDR (echo, sink or source) and hands the
// listeners to a copy of itself in a session of its own, which serves them
// until it is killed. serve returns once every address listens: a client
// started after it returns is accepted, with no wait and no retry.
func serve(specs []string) error {
	handlers := make([]func(net.Conn) error, len(specs))
	addrs := make([]string, len(specs))
	for i, spec := range specs {
		name, addr, ok := strings.Cut(spec, "=")
		if handlers[i] = services[name]; !ok || handlers[i] == nil {
			return fmt.Errorf("serve %q: give echo=ADDR, sink=ADDR or source=ADDR", spec)
		}
		addrs[i] = addr
	}
	if os.Getenv(servingEnv) != "" {
		return serveInherited(handlers)
	}
	var files []*os.File
	for _, addr := range addrs {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		f, err := l.(*net.TCPListener).File()
		if err != nil {
			return err
		}
		files = append(files, f)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), servingEnv+"=1")
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives the console's shell
	if err := cmd.Start(); err != nil {
		return err
	}
	fmt.Printf("serving %s (pid %d)\n", strings.Join(specs, " "), cmd.Process.Pid)
	return nil
}

// serveInherited serves the listeners serve passed down, one connection per
// goroutine, until a listener fails.
func serveInherited(handlers []func(net.Conn) error) error {
	failed := make(chan error, len(handlers))
	for i, h := range handlers {
		l, err := net.FileListener(os.NewFile(uintptr(3+i), "listener"))
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					failed <- err
					return
				}
				go func() {
					defer c.Close()
					c.SetDeadline(time.Now().Add(connTimeout))
					h(c)
				}()
			}
		}()
	}
	return <-failed
}
