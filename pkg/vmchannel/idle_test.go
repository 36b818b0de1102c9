package vmchannel

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/usernet"
	"github.com/minivirt/minivirt/pkg/usernet/usernettest"
)

// TestIdleMemory measures what one idle open guest connection costs the
// supervisor: the PSS of this process with idleConns connections open
// through the real user network and relay, less its PSS with none, per
// connection. It fails above maxIdleCost. It runs only on demand:
//
//	MINIVIRT_IDLE_MEMORY=1 go test -run '^TestIdleMemory$' -v ./pkg/vmchannel
//
// (MINIVIRT_IDLE_CONNS sets the number of connections, 256 by default;
// MINIVIRT_IDLE_BYTES what each carries each way before it goes idle, 64
// KiB by default.)
//
// Only the supervisor's side runs in this process: the usernet.Network,
// its accept path and the Relay. The guest (a gVisor stack of its own,
// usernettest) and the host service holding the connections open run in a
// child process, this test binary again, so that neither is counted. Each
// connection carries some bytes each way before it goes idle, so that what
// a connection keeps after traffic is counted too: a buffer allocated and
// never written is not resident, and would not count.
func TestIdleMemory(t *testing.T) {
	if os.Getenv(idleGuestEnv) != "" {
		idleGuest(t)
		return
	}
	if os.Getenv("MINIVIRT_IDLE_MEMORY") == "" {
		t.Skip("measures memory per idle connection: set MINIVIRT_IDLE_MEMORY=1")
	}
	if raceDetector {
		t.Skip("the race detector's shadow memory swamps what is measured")
	}
	conns := 256
	if s := os.Getenv("MINIVIRT_IDLE_CONNS"); s != "" {
		var err error
		if conns, err = strconv.Atoi(s); err != nil || conns <= 0 {
			t.Fatalf("MINIVIRT_IDLE_CONNS=%q", s)
		}
	}
	size := "65536"
	if s := os.Getenv("MINIVIRT_IDLE_BYTES"); s != "" {
		size = s
	}
	hostSock := filepath.Join(t.TempDir(), "host.sock")
	ch := domain.VMChannel{Address: testChannel.Addr(), Port: testChannel.Port(), Path: hostSock, MaxConnections: conns + 1}
	r := New(Identity{Name: "dom", UUID: "6c3b1f0e-8a4d-4f6b-9c2e-1d7a5b3e9f40"}, []domain.VMChannel{ch})
	n, err := usernet.New([]domain.VMChannel{ch}, r.Handle)
	if err != nil {
		t.Fatal(err)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	qemu := os.NewFile(uintptr(fds[1]), "qemu")
	ours, err := net.FileConn(os.NewFile(uintptr(fds[0]), "network"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- n.Serve(ctx, ours) }()

	// The child: the guest on QEMU's end of the link, and the host service.
	toChild, childIn, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	childOut, fromChild, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestIdleMemory$", "-test.count=1")
	cmd.Env = append(os.Environ(), idleGuestEnv+"=1", "MINIVIRT_IDLE_HOST="+hostSock, "MINIVIRT_IDLE_BYTES="+size)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = toChild, fromChild, os.Stderr
	cmd.ExtraFiles = []*os.File{qemu} // fd 3
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	toChild.Close()
	fromChild.Close()
	qemu.Close()
	lines := bufio.NewReader(childOut)
	expect := func(want string, within time.Duration) {
		t.Helper()
		childOut.SetReadDeadline(time.Now().Add(within))
		line, err := lines.ReadString('\n')
		if strings.TrimSpace(line) != want {
			t.Fatalf("child said %q (%v), want %q", line, err, want)
		}
	}
	defer func() {
		childIn.Close() // the child closes its connections and exits
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("child: %v", err)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("child did not exit within 30s")
		}
	}()
	expect("ready", 30*time.Second)

	before := measure(t)
	began := time.Now()
	fmt.Fprintf(childIn, "open %d\n", conns)
	expect("open", 2*time.Minute)
	t.Logf("opening the connections and carrying their bytes took %v", time.Since(began).Round(time.Millisecond))
	after := measure(t)
	if c, _ := r.Counters(testChannel); c.Active != uint64(conns) {
		t.Fatalf("%d active connections, want %d", c.Active, conns)
	}
	per := func(a, b int64) float64 { return float64(b-a) / float64(conns) / 1024 }
	t.Logf("%d idle connections, %s bytes each way before: PSS %d -> %d KiB after GC, %.1f KiB per connection; after FreeOSMemory %d -> %d KiB, %.1f KiB per connection",
		conns, size, before.pss>>10, after.pss>>10, per(before.pss, after.pss), before.pssFreed>>10, after.pssFreed>>10, per(before.pssFreed, after.pssFreed))
	t.Logf("per connection: heap in use %.1f KiB, stacks %.1f KiB, %.2f goroutines",
		per(before.heap, after.heap), per(before.stack, after.stack), float64(after.goroutines-before.goroutines)/float64(conns))
	if got := per(before.pss, after.pss); got > maxIdleCost/1024 {
		t.Errorf("an idle connection costs %.1f KiB of PSS, want at most %d KiB", got, maxIdleCost>>10)
	}

	fmt.Fprintln(childIn, "close")
	expect("closed", time.Minute)
	waited := make(chan struct{})
	go func() { r.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		t.Error("the relay's connections did not end within 30s of the guest's closing them")
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	n.Close()
}

// maxIdleCost is the most PSS one idle open connection may cost.
const maxIdleCost = 32 << 10

const idleGuestEnv = "MINIVIRT_IDLE_GUEST"

type usage struct {
	pss, pssFreed, heap, stack int64
	goroutines                 int
}

// measure reads this process's PSS after garbage collection (four times:
// a sync.Pool's buffers survive one, and each halves at most an idle
// goroutine's stack), and again after returning freed memory to the
// system.
func measure(t *testing.T) usage {
	t.Helper()
	for range 4 {
		runtime.GC()
	}
	var u usage
	u.pss = pss(t)
	debug.FreeOSMemory()
	u.pssFreed = pss(t)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	u.heap, u.stack, u.goroutines = int64(ms.HeapInuse), int64(ms.StackInuse), runtime.NumGoroutine()
	return u
}

// pss is the Pss line of /proc/self/smaps_rollup, in bytes.
func pss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		t.Fatal(err)
	}
	for line := range bytes.Lines(b) {
		if f := strings.Fields(string(line)); len(f) == 3 && f[0] == "Pss:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no Pss in /proc/self/smaps_rollup")
	return 0
}

// idleGuest is the child of TestIdleMemory: a guest on fd 3 and the host
// service on MINIVIRT_IDLE_HOST. Told "open N" on stdin, the guest opens N
// connections to the channel, each sends MINIVIRT_IDLE_BYTES and reads as
// many back from the service, and it says "open"; told "close", it closes them and says
// "closed". It exits at the end of stdin.
func idleGuest(t *testing.T) {
	size, err := strconv.Atoi(os.Getenv("MINIVIRT_IDLE_BYTES"))
	if err != nil || size <= 0 {
		t.Fatalf("MINIVIRT_IDLE_BYTES=%q", os.Getenv("MINIVIRT_IDLE_BYTES"))
	}
	l, err := net.Listen("unix", os.Getenv("MINIVIRT_IDLE_HOST"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { // echoes the guest's bytes, then holds the connection until the guest ends it
				b := make([]byte, size)
				if _, err := io.ReadFull(c, b); err == nil {
					c.Write(b)
					io.Copy(io.Discard, c)
				}
				c.Close()
			}()
		}
	}()
	link, err := net.FileConn(os.NewFile(3, "qemu"))
	if err != nil {
		t.Fatal(err)
	}
	g, err := usernettest.Start(link, usernet.MTU)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	fmt.Println("ready")
	var open []net.Conn
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch f := strings.Fields(in.Text()); f[0] {
		case "open":
			count, _ := strconv.Atoi(f[1])
			for range count {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				c, err := g.Dial(ctx, testChannel)
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				open = append(open, c)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				b := bytes.Repeat([]byte{'x'}, size)
				if _, err := c.Write(b); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(c, b); err != nil {
					t.Fatalf("connection %d: %v", len(open), err)
				}
				c.SetDeadline(time.Time{})
			}
			fmt.Println("open")
		case "close":
			for _, c := range open {
				c.Close()
			}
			open = nil
			fmt.Println("closed")
		}
	}
}
