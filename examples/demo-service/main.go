// Command demo-service is the host side of minivirt's demo: a service on a
// Unix socket that prints every accept and answers each guest connection on
// its own. It is what a vmchannel target looks like: an ordinary Unix socket
// server, one accepted connection per guest connection.
//
//	demo-service /path/to/socket
package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: demo-service SOCKET")
		os.Exit(2)
	}
	path := os.Args[1]
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo-service: %v\n", err)
		os.Exit(1)
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		<-sig
		l.Close() // removes the socket file
	}()
	fmt.Printf("host: listening on %s\n", path)
	var n atomic.Int64
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		id := n.Add(1)
		go func() {
			defer c.Close()
			// The guest half-closes after its request: read it whole.
			req, err := io.ReadAll(c)
			if err != nil {
				fmt.Printf("host: accept #%d: %v\n", id, err)
				return
			}
			fmt.Printf("host: accept #%d: guest says %q\n", id, req)
			fmt.Fprintf(c, "hello guest, you are host connection #%d", id)
		}()
	}
}
