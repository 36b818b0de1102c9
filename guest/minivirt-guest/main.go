// Command minivirt-guest runs inside minivirt's tiny test guest: it powers the
// guest off on the ACPI power button and acts as a vmchannel client for tests
// and the demo, and as the benchmark's services on the guest's own loopback.
package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "powerbutton":
		err = powerButton()
	case "request":
		// request ADDR MESSAGE: send MESSAGE, half-close, print the reply.
		if len(os.Args) != 4 {
			usage()
		}
		var reply []byte
		reply, err = request(os.Args[2], []byte(os.Args[3]))
		fmt.Printf("reply: %s\n", reply)
	case "fetch":
		// fetch ADDR: half-close at once and write what the host sends,
		// as is; an empty answer is an error (nothing served yet).
		if len(os.Args) != 3 {
			usage()
		}
		var body []byte
		if body, err = request(os.Args[2], nil); err == nil && len(body) == 0 {
			err = fmt.Errorf("%s: nothing served", os.Args[2])
		}
		os.Stdout.Write(body)
	case "fill":
		// fill MIB FILE: write MIB MiB that no page of repeats into FILE,
		// on a RAM file system: a save has to copy it all.
		if len(os.Args) != 4 {
			usage()
		}
		n, _ := strconv.Atoi(os.Args[2])
		err = fill(n, os.Args[3])
	case "parallel":
		// parallel N ADDR: N connections at once, each its own request.
		if len(os.Args) != 4 {
			usage()
		}
		n, _ := strconv.Atoi(os.Args[2])
		err = parallel(n, os.Args[3])
	case "hostfirst":
		// hostfirst ADDR MESSAGE: read what the host sends until it
		// half-closes, print it, then send MESSAGE and close.
		if len(os.Args) != 4 {
			usage()
		}
		err = hostFirst(os.Args[2], []byte(os.Args[3]))
	case "dhcp-flood":
		// dhcp-flood N: N DHCP DISCOVERs and REQUESTs from random MACs.
		if len(os.Args) != 3 {
			usage()
		}
		n, _ := strconv.Atoi(os.Args[2])
		err = dhcpFlood(n)
	case "syn-flood":
		// syn-flood N ADDR: N TCP SYNs to ADDR, never completed.
		if len(os.Args) != 4 {
			usage()
		}
		n, _ := strconv.Atoi(os.Args[2])
		err = synFlood(n, os.Args[3])
	case "virtio-echo":
		// virtio-echo NAME: answer each line on /dev/virtio-ports/NAME.
		if len(os.Args) != 3 {
			usage()
		}
		err = virtioEcho(os.Args[2])
	case "serve":
		// serve SERVICE=ADDR...: serve echo, sink or source on each ADDR
		// (127.0.0.1 for the loopback benchmark) from a process left
		// running; returns once every address listens.
		if len(os.Args) < 3 {
			usage()
		}
		err = serve(os.Args[2:])
	case "latency", "bulk", "bulkin", "hold", "flood", "rate":
		// latency N ADDR | bulk BYTES ADDR | bulkin BYTES ADDR | hold N ADDR | flood SECONDS ADDR | rate SECONDS ADDR
		if len(os.Args) != 4 {
			usage()
		}
		n, _ := strconv.Atoi(os.Args[2])
		err = map[string]func(int, string) error{"latency": latency, "bulk": bulk, "bulkin": bulkIn, "hold": hold,
			"flood": flood, "rate": rate}[os.Args[1]](n, os.Args[3])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "minivirt-guest: %v\n", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: minivirt-guest powerbutton | request ADDR MESSAGE | fetch ADDR | fill MIB FILE | parallel N ADDR | hostfirst ADDR MESSAGE | virtio-echo NAME | latency N ADDR | bulk BYTES ADDR | bulkin BYTES ADDR | rate SECONDS ADDR | hold N ADDR | flood SECONDS ADDR | serve SERVICE=ADDR... | dhcp-flood N | syn-flood N ADDR")
	os.Exit(2)
}

// request sends msg on a new connection, closes its writing side, and
// returns everything the peer sends until it closes.
func request(addr string, msg []byte) ([]byte, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return nil, err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return nil, err
	}
	return io.ReadAll(c)
}

func hostFirst(addr string, msg []byte) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	banner, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	fmt.Printf("host said: %s\n", banner)
	if _, err := c.Write(msg); err != nil {
		return err
	}
	return c.(*net.TCPConn).CloseWrite()
}

func virtioEcho(name string) error {
	f, err := os.OpenFile("/dev/virtio-ports/"+name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Println("virtio-echo: listening")
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		if err == io.EOF { // no host connected yet: the port reads as EOF
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			return err
		}
		if _, err := f.Write(append([]byte("echo: "), buf[:n]...)); err != nil {
			return err
		}
	}
}

func parallel(n int, addr string) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply, err := request(addr, []byte(fmt.Sprintf("hello from guest connection %d", i)))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fmt.Printf("connection %d: %v\n", i, err)
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			fmt.Printf("connection %d reply: %s\n", i, reply)
		}()
	}
	wg.Wait()
	return firstErr
}

// powerButton waits for KEY_POWER on any input device and powers off.
func powerButton() error {
	devs, _ := filepath.Glob("/dev/input/event*")
	if len(devs) == 0 {
		return fmt.Errorf("no input devices: is evdev loaded?")
	}
	pressed := make(chan struct{}, 1)
	for _, dev := range devs {
		f, err := os.Open(dev)
		if err != nil {
			continue
		}
		go func() {
			// struct input_event on 64-bit: timeval (16 bytes), type, code (u16), value (s32).
			var ev [24]byte
			for {
				if _, err := io.ReadFull(f, ev[:]); err != nil {
					return
				}
				typ, code, value := binary.LittleEndian.Uint16(ev[16:]), binary.LittleEndian.Uint16(ev[18:]), int32(binary.LittleEndian.Uint32(ev[20:]))
				if typ == 1 && code == 116 && value == 1 { // EV_KEY, KEY_POWER, pressed
					pressed <- struct{}{}
				}
			}
		}()
	}
	os.WriteFile("/run/powerbutton.ready", nil, 0o644)
	<-pressed
	fmt.Println("minivirt-guest: power button pressed, powering off")
	syscall.Sync()
	return syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}

// latency measures n connections one after another: connect, a one-byte
// round trip, close.
func latency(n int, addr string) error {
	var times []time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return err
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var b [1]byte
		if _, err := c.Write([]byte{'x'}); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return err
		}
		c.Close()
		times = append(times, time.Since(start))
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	fmt.Printf("latency n=%d p50=%.2fms p99=%.2fms\n", n, ms(times[n/2]), ms(times[(n*99)/100]))
	return nil
}

// bulk sends size bytes on one connection and waits for the host's count.
func bulk(size int, addr string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	buf := make([]byte, 64<<10)
	start := time.Now()
	for sent := 0; sent < size; {
		n := min(len(buf), size-sent)
		if _, err := c.Write(buf[:n]); err != nil {
			return err
		}
		sent += n
	}
	c.(*net.TCPConn).CloseWrite()
	reply, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Printf("bulk bytes=%d host=%s seconds=%.3f MBps=%.1f\n", size, reply, secs, float64(size)/secs/1e6)
	return nil
}

// bulkIn asks the host for size bytes (it writes the number, then
// half-closes) and times receiving them: the host-to-guest direction.
func bulkIn(size int, addr string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	start := time.Now()
	fmt.Fprintf(c, "%d\n", size)
	c.(*net.TCPConn).CloseWrite()
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Printf("bulkin bytes=%d seconds=%.3f MBps=%.1f\n", n, secs, float64(n)/secs/1e6)
	return nil
}

// rate makes round trips (connect, a byte each way, close) on 4 workers for
// the given seconds: sustained connections per second.
func rate(seconds int, addr string) error {
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	var mu sync.Mutex
	var ok, failed int
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				good := func() bool {
					c, err := net.DialTimeout("tcp", addr, 5*time.Second)
					if err != nil {
						return false
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(5 * time.Second))
					var b [1]byte
					if _, err := c.Write([]byte{'r'}); err != nil {
						return false
					}
					_, err = io.ReadFull(c, b[:])
					return err == nil
				}()
				mu.Lock()
				if good {
					ok++
				} else {
					failed++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	fmt.Printf("rate ok=%d failed=%d seconds=%.2f per_second=%.1f\n", ok, failed, secs, float64(ok)/secs)
	return nil
}

// hold opens n connections, sends a byte on each, and keeps them open.
func hold(n int, addr string) error {
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		c.Write([]byte{'h'})
		conns = append(conns, c)
	}
	fmt.Printf("holding %d\n", len(conns))
	for { // not select{}: with no goroutine left, Go calls that a deadlock and exits
		time.Sleep(time.Hour)
	}
}

// flood opens connections in a tight loop for the given seconds.
func flood(seconds int, addr string) error {
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	var ok, failed int
	for time.Now().Before(end) {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			failed++
			continue
		}
		c.Write([]byte("flood"))
		c.Close()
		ok++
	}
	fmt.Printf("flood ok=%d failed=%d\n", ok, failed)
	return nil
}

// fill writes mib MiB of a xorshift sequence to path.
func fill(mib int, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	x := uint64(88172645463325252)
	for i := 0; i < mib; i++ {
		for j := 0; j < len(buf); j += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			binary.LittleEndian.PutUint64(buf[j:], x)
		}
		if _, err := f.Write(buf); err != nil {
			f.Close()
			return err
		}
	}
	fmt.Printf("filled %d MiB\n", mib)
	return f.Close()
}
