// Command e2e measures minivirt's vmchannel end to end with the tiny guest,
// side by side in one run with two baselines on the same guest image:
// QEMU's own per-connection relay (guestfwd cmd:socat) and plain user-mode
// TCP from the guest to a host TCP port. It also times `minivirt start`
// against starting the same QEMU argv directly, and the CLI with 10,000
// defined domains. It prints a Markdown report.
//
//	go run ./bench/e2e -minivirt build/minivirt -guest build/guest
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/qmp"
	"github.com/minivirt/minivirt/pkg/store"
)

var (
	minivirt = flag.String("minivirt", "build/minivirt", "the minivirt binary")
	guestDir = flag.String("guest", "build/guest", "directory of the tiny guest")
	latencyN = flag.Int("n", 200, "connections per latency run")
	bulkSize = flag.Int("bulk", 32<<20, "bytes in the bulk stream")
	starts   = flag.Int("starts", 5, "start-time runs per side")
	domains  = flag.Int("domains", 10000, "defined domains for the CLI figures")
)

func main() {
	flag.Parse()
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
}

// bench is one run's shared state.
type bench struct {
	dir      string
	bin      string
	kernel   string
	initrd   string
	echoPath string // unix services: echo one byte, count a stream, hold
	bulkPath string
	holdPath string
	echoTCP  int // the same services on host TCP ports, for the ceiling
	bulkTCP  int
	holds    chan struct{}
	cleanup  []func()
}

func run() error {
	dir, err := os.MkdirTemp("", "mvbench-")
	if err != nil {
		return err
	}
	b := &bench{dir: dir, holds: make(chan struct{}, 4096)}
	defer func() {
		for i := len(b.cleanup) - 1; i >= 0; i-- {
			b.cleanup[i]()
		}
		os.RemoveAll(dir)
	}()
	if b.bin, err = filepath.Abs(*minivirt); err != nil {
		return err
	}
	g, err := filepath.Abs(*guestDir)
	if err != nil {
		return err
	}
	b.kernel, b.initrd = filepath.Join(g, "vmlinuz"), filepath.Join(g, "initrd.gz")
	if err := b.services(); err != nil {
		return err
	}

	fmt.Printf("# minivirt end-to-end benchmarks\n\n")
	host, _ := os.Hostname()
	out, _ := exec.Command("qemu-system-x86_64", "--version").Output()
	kvm := "tcg"
	if ok, _ := launcher.DetectKVM(os.Getenv); ok {
		kvm = "kvm"
	}
	fmt.Printf("Machine: %s, %d CPUs, %s; accel %s; %s\n\n", host, numCPU(), memTotal(), kvm, firstLine(string(out)))

	mv, err := b.measureMinivirt("bench", "<interface type='user'/>")
	if err != nil {
		return fmt.Errorf("minivirt side: %w", err)
	}
	ns, err := b.measureMinivirt("benchns", "<vmchannels network='netstack'/>")
	if err != nil {
		return fmt.Errorf("netstack side: %w", err)
	}
	so, err := b.measureSocat()
	if err != nil {
		return fmt.Errorf("socat side: %w", err)
	}
	b.report(mv, ns, so)
	if err := b.startTimes(); err != nil {
		return fmt.Errorf("start times: %w", err)
	}
	return b.cliFigures()
}

type figures struct {
	p50, p99      float64 // ms
	bulk          float64 // MB/s
	rss64, rss256 uint64  // bytes
	tcp           *figures
}

// services starts the host side: the same three services on Unix sockets
// (for vmchannels and socat) and two on TCP (for the user-network ceiling).
func (b *bench) services() error {
	echo := func(c net.Conn) {
		defer c.Close()
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err == nil {
			c.Write(one[:])
		}
	}
	sink := func(c net.Conn) {
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		fmt.Fprint(c, n)
	}
	hold := func(c net.Conn) {
		b.holds <- struct{}{}
		io.Copy(io.Discard, c) // until the guest closes
		c.Close()
	}
	serve := func(network, addr string, fn func(net.Conn)) (net.Listener, error) {
		l, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		b.cleanup = append(b.cleanup, func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go fn(c)
			}
		}()
		return l, nil
	}
	b.echoPath, b.bulkPath, b.holdPath = filepath.Join(b.dir, "echo.sock"), filepath.Join(b.dir, "bulk.sock"), filepath.Join(b.dir, "hold.sock")
	for _, s := range []struct {
		path string
		fn   func(net.Conn)
	}{{b.echoPath, echo}, {b.bulkPath, sink}, {b.holdPath, hold}} {
		if _, err := serve("unix", s.path, s.fn); err != nil {
			return err
		}
	}
	le, err := serve("tcp", "127.0.0.1:0", echo)
	if err != nil {
		return err
	}
	lb, err := serve("tcp", "127.0.0.1:0", sink)
	if err != nil {
		return err
	}
	b.echoTCP, b.bulkTCP = le.Addr().(*net.TCPAddr).Port, lb.Addr().(*net.TCPAddr).Port
	return nil
}

func (b *bench) cmdline() string { return "console=ttyS0 quiet" }

// measureMinivirt boots the guest through minivirt with three vmchannels.
// With an explicit user NIC (QEMU's network, guestfwd and the helper), it
// also measures plain TCP, the ceiling, from the same guest.
func (b *bench) measureMinivirt(name, devices string) (*figures, error) {
	env := b.env(name)
	xml := fmt.Sprintf(`<domain type='kvm'><name>%s</name><memory unit='MiB'>256</memory>
<os><kernel>%s</kernel><initrd>%s</initrd><cmdline>%s</cmdline></os><devices>%s
<interface type='vmchannel'><source port='600'/><target path='%s'/></interface>
<interface type='vmchannel'><source port='601'/><target path='%s'/></interface>
<interface type='vmchannel'><source port='602'/><target path='%s' maxconnections='1024'/></interface>
</devices></domain>`, name, b.kernel, b.initrd, b.cmdline(), devices, b.echoPath, b.bulkPath, b.holdPath)
	if err := b.mv(env, xml, "define", "-"); err != nil {
		return nil, err
	}
	if err := b.mv(env, "", "start", name); err != nil {
		return nil, err
	}
	defer b.mv(env, "", "destroy", name)
	console := filepath.Join(env.run, name, "console.sock")
	if err := waitReady(filepath.Join(env.state, "logs", name+".log")); err != nil {
		return nil, err
	}
	f, err := b.measure(console, "10.0.2.4:600", "10.0.2.4:601", "10.0.2.4:602", func() []int {
		var st struct {
			SupervisorPID int `json:"supervisor_pid"`
		}
		out, _ := b.mvOut(env, "status", name, "-o", "json")
		json.Unmarshal([]byte(out), &st)
		helpers := testenv.Processes(func(argv []string) bool { return len(argv) > 1 && argv[1] == launcher.HelperCommand })
		return append([]int{st.SupervisorPID}, helpers...)
	})
	if err != nil || !strings.Contains(devices, "type='user'") {
		return f, err
	}
	tcp, err := b.measureTCP(console)
	if err != nil {
		return nil, err
	}
	f.tcp = tcp
	return f, nil
}

// measureSocat boots the same guest under bare QEMU whose guestfwd rules run
// socat per connection, as one would without minivirt.
func (b *bench) measureSocat() (*figures, error) {
	console := filepath.Join(b.dir, "socat-console.sock")
	rule := func(port int, path string) string {
		return fmt.Sprintf("guestfwd=tcp:10.0.2.4:%d-cmd:socat - UNIX-CONNECT:%s", port, path)
	}
	argv := []string{"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-kernel", b.kernel, "-initrd", b.initrd, "-append", b.cmdline(),
		"-chardev", "socket,id=s0,path=" + console + ",server=on,wait=off,logfile=" + filepath.Join(b.dir, "socat.log"),
		"-serial", "chardev:s0",
		"-netdev", "user,id=n0," + strings.Join([]string{rule(600, b.echoPath), rule(601, b.bulkPath), rule(602, b.holdPath)}, ","),
		"-device", "virtio-net-pci,netdev=n0"}
	cmd := exec.Command("qemu-system-x86_64", argv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// glib double-forks what slirp spawns: the helpers are not QEMU's
	// children. They are the socat processes that name this run's sockets.
	socats := func() []int {
		return testenv.Processes(func(argv []string) bool {
			return len(argv) > 2 && filepath.Base(argv[0]) == "socat" && strings.Contains(argv[2], b.dir)
		})
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		for _, pid := range socats() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}()
	if err := waitReady(filepath.Join(b.dir, "socat.log")); err != nil {
		return nil, err
	}
	return b.measure(console, "10.0.2.4:600", "10.0.2.4:601", "10.0.2.4:602", socats)
}

func (b *bench) measureTCP(console string) (*figures, error) {
	f := &figures{}
	var err error
	if f.p50, f.p99, err = latencyRun(console, fmt.Sprintf("10.0.2.2:%d", b.echoTCP)); err != nil {
		return nil, err
	}
	f.bulk, err = bulkRun(console, fmt.Sprintf("10.0.2.2:%d", b.bulkTCP))
	return f, err
}

// measure takes latency, bulk and memory through one guest's channels;
// pids lists the processes whose memory counts for this side.
func (b *bench) measure(console, echo, bulk, hold string, pids func() []int) (*figures, error) {
	f := &figures{}
	var err error
	if f.p50, f.p99, err = latencyRun(console, echo); err != nil {
		return nil, err
	}
	if f.bulk, err = bulkRun(console, bulk); err != nil {
		return nil, err
	}
	for _, n := range []int{64, 256} {
		rss, err := b.holdRun(console, hold, n, pids)
		if err != nil {
			return nil, err
		}
		if n == 64 {
			f.rss64 = rss
		} else {
			f.rss256 = rss
		}
	}
	return f, nil
}

var (
	latencyLine = regexp.MustCompile(`latency n=\d+ p50=([\d.]+)ms p99=([\d.]+)ms`)
	bulkLine    = regexp.MustCompile(`bulk bytes=\d+ host=(\d+) seconds=[\d.]+ MBps=([\d.]+)`)
)

func latencyRun(console, addr string) (float64, float64, error) {
	out, rc, err := testenv.ConsoleExec(console, fmt.Sprintf("minivirt-guest latency %d %s", *latencyN, addr), 10*time.Minute)
	m := latencyLine.FindStringSubmatch(out)
	if err != nil || rc != 0 || m == nil {
		return 0, 0, fmt.Errorf("latency to %s: %v, exit %d: %s", addr, err, rc, out)
	}
	p50, _ := strconv.ParseFloat(m[1], 64)
	p99, _ := strconv.ParseFloat(m[2], 64)
	return p50, p99, nil
}

func bulkRun(console, addr string) (float64, error) {
	out, rc, err := testenv.ConsoleExec(console, fmt.Sprintf("minivirt-guest bulk %d %s", *bulkSize, addr), 10*time.Minute)
	m := bulkLine.FindStringSubmatch(out)
	if err != nil || rc != 0 || m == nil || m[1] != strconv.Itoa(*bulkSize) {
		return 0, fmt.Errorf("bulk to %s: %v, exit %d: %s", addr, err, rc, out)
	}
	return strconv.ParseFloat(m[2], 64)
}

// holdRun has the guest open n connections and keep them, waits until the
// host has accepted them all, and sums the RSS of pids().
func (b *bench) holdRun(console, addr string, n int, pids func() []int) (uint64, error) {
	for len(b.holds) > 0 {
		<-b.holds
	}
	if _, _, err := testenv.ConsoleExec(console, fmt.Sprintf("minivirt-guest hold %d %s > /tmp/hold.log 2>&1 & true", n, addr), time.Minute); err != nil {
		return 0, err
	}
	deadline := time.After(5 * time.Minute)
	for i := 0; i < n; i++ {
		select {
		case <-b.holds:
		case <-deadline:
			out, _, _ := testenv.ConsoleExec(console, "cat /tmp/hold.log", time.Minute)
			return 0, fmt.Errorf("%d of %d held connections arrived: %s", i, n, out)
		}
	}
	time.Sleep(time.Second) // let the last helpers settle
	var rss uint64
	for _, pid := range pids() {
		rss += rssOf(pid)
	}
	testenv.ConsoleExec(console, "kill $!; wait $!", time.Minute)
	time.Sleep(2 * time.Second)
	return rss, nil
}

func (b *bench) report(mv, ns, so *figures) {
	tcp := mv.tcp
	fmt.Printf("## vmchannel data path (%d connections for latency, one %d MiB stream for bulk)\n\n", *latencyN, *bulkSize>>20)
	fmt.Printf("| figure | netstack (minivirt's network) | slirp + helper (minivirt) | guestfwd cmd:socat | plain user-mode TCP | netstack / socat | netstack / TCP | slirp / socat |\n|---|---|---|---|---|---|---|---|\n")
	row := func(name string, n, m, s, t float64, format string) {
		ratio := func(a, b float64) string {
			if b == 0 {
				return "-"
			}
			return fmt.Sprintf("%.3fx", a/b)
		}
		cell := func(v float64) string {
			if v == 0 {
				return "-"
			}
			return fmt.Sprintf(format, v)
		}
		fmt.Printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", name, cell(n), cell(m), cell(s), cell(t), ratio(n, s), ratio(n, t), ratio(m, s))
	}
	row("latency p50 (ms)", ns.p50, mv.p50, so.p50, tcp.p50, "%.2f")
	row("latency p99 (ms)", ns.p99, mv.p99, so.p99, tcp.p99, "%.2f")
	row("bulk (MB/s)", ns.bulk, mv.bulk, so.bulk, tcp.bulk, "%.1f")
	row("RSS, 64 open connections (MB)", mb(ns.rss64), mb(mv.rss64), mb(so.rss64), 0, "%.1f")
	row("RSS, 256 open connections (MB)", mb(ns.rss256), mb(mv.rss256), mb(so.rss256), 0, "%.1f")
	fmt.Printf("\nRSS counts every process of the side: minivirt's supervisor (and any helper still alive), or every socat QEMU spawned; QEMU itself is common to all and left out.\n\n")
	check := func(name string, ok bool, got string) {
		mark := "met"
		if !ok {
			mark = "MISSED"
		}
		fmt.Printf("- %s: %s (%s)\n", name, mark, got)
	}
	fmt.Printf("Targets, slirp path (issue 6):\n\n")
	check("latency p50 at most 1.0x socat", mv.p50 <= so.p50, fmt.Sprintf("%.2fx", mv.p50/so.p50))
	check("bulk at least 1.0x socat", mv.bulk >= so.bulk, fmt.Sprintf("%.2fx", mv.bulk/so.bulk))
	check("bulk at least 0.9x plain user-mode TCP", mv.bulk >= 0.9*tcp.bulk, fmt.Sprintf("%.2fx", mv.bulk/tcp.bulk))
	check("RSS at 256 connections at most 0.1x socat", float64(mv.rss256) <= 0.1*float64(so.rss256), fmt.Sprintf("%.3fx", float64(mv.rss256)/float64(so.rss256)))
	fmt.Printf("\nTargets, netstack (issue 8):\n\n")
	check("latency p50 at most 1.2x plain user-mode TCP", ns.p50 <= 1.2*tcp.p50, fmt.Sprintf("%.2fx", ns.p50/tcp.p50))
	check("latency p50 at most 0.5x socat", ns.p50 <= 0.5*so.p50, fmt.Sprintf("%.2fx", ns.p50/so.p50))
	check("bulk at least 1.2x socat", ns.bulk >= 1.2*so.bulk, fmt.Sprintf("%.2fx", ns.bulk/so.bulk))
	check("RSS at 256 connections at most 0.05x socat", float64(ns.rss256) <= 0.05*float64(so.rss256), fmt.Sprintf("%.3fx", float64(ns.rss256)/float64(so.rss256)))
	fmt.Println()
}

// startTimes compares `minivirt start` (until it returns: the guest's CPUs
// run under supervision) with QEMU started directly from the same argv,
// paused, until QMP's cont returns.
func (b *bench) startTimes() error {
	env := b.env("start")
	xml := fmt.Sprintf(`<domain type='qemu'><name>st</name><memory unit='MiB'>256</memory>
<os><kernel>%s</kernel><initrd>%s</initrd><cmdline>%s</cmdline></os></domain>`, b.kernel, b.initrd, b.cmdline())
	if err := b.mv(env, xml, "define", "-"); err != nil {
		return err
	}
	// The bare side runs the argv minivirt builds for the same domain.
	d, err := domain.Parse(strings.NewReader(xml))
	if err != nil {
		return err
	}
	qemu, _ := exec.LookPath("qemu-system-x86_64")
	plan, err := launcher.Build(d, launcher.Env{QEMU: qemu, Self: b.bin, RunDir: filepath.Join(b.dir, "bare"), LogDir: b.dir})
	if err != nil {
		return err
	}
	argv := plan.Argv
	var mvTimes, bareTimes []time.Duration
	for i := 0; i < *starts; i++ {
		t0 := time.Now()
		if err := b.mv(env, "", "start", "st"); err != nil {
			return err
		}
		mvTimes = append(mvTimes, time.Since(t0))
		if err := b.mv(env, "", "destroy", "st"); err != nil {
			return err
		}
	}
	for i := 0; i < *starts; i++ {
		d, err := bareStart(b.dir, argv)
		if err != nil {
			return err
		}
		bareTimes = append(bareTimes, d)
	}
	m, bare := median(mvTimes), median(bareTimes)
	fmt.Printf("## start\n\n| figure | minivirt start | the same QEMU argv, bare | overhead |\n|---|---|---|---|\n")
	fmt.Printf("| start to running, median of %d (ms) | %.1f | %.1f | %.1f ms |\n\n", *starts, ms(m), ms(bare), ms(m-bare))
	ok := m-bare <= 100*time.Millisecond
	fmt.Printf("Target: start overhead at most 100 ms above bare QEMU: %s\n\n", map[bool]string{true: "met", false: "MISSED"}[ok])
	return nil
}

// bareStart runs argv as minivirt does (paused), but with plain QMP and
// serial sockets instead of inherited descriptors, and times it to cont.
func bareStart(dir string, argv []string) (time.Duration, error) {
	qmpPath := filepath.Join(dir, "bare-qmp.sock")
	var args []string
	for i := 1; i < len(argv); i++ {
		a := argv[i]
		if a == "-chardev" || a == "-mon" || a == "-serial" || a == "-sandbox" {
			i++
			continue
		}
		args = append(args, a)
	}
	args = append(args, "-qmp", "unix:"+qmpPath+",server=on,wait=off", "-serial", "null")
	t0 := time.Now()
	cmd := exec.Command(argv[0], args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { cmd.Process.Kill(); os.Remove(qmpPath) }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	exited := make(chan struct{})
	go func() { cmd.Process.Wait(); close(exited) }()
	var m *qmp.Conn
	var err error
	for m == nil {
		if m, err = qmp.Dial(ctx, qmpPath); err != nil {
			select {
			case <-exited:
				return 0, fmt.Errorf("bare QEMU exited: %v", args)
			case <-ctx.Done():
				return 0, err
			case <-time.After(time.Millisecond):
			}
		}
	}
	defer m.Close()
	if err := qmp.Cont(ctx, m); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

// cliFigures times `list --all` and `define` with many defined domains,
// beside the same commands on an empty store.
func (b *bench) cliFigures() error {
	empty, full := b.env("cli-empty"), b.env("cli-full")
	st, err := store.Open(full.state, 10*time.Second)
	if err != nil {
		return err
	}
	t0 := time.Now()
	for i := 0; i < *domains; i++ {
		d, err := domain.Parse(strings.NewReader(fmt.Sprintf(`<domain type='qemu'><name>d%05d</name><memory unit='MiB'>64</memory><os><kernel>/k</kernel></os>
<devices><interface type='vmchannel'><source port='600'/><target path='/run/x%d.sock'/></interface></devices></domain>`, i, i)))
		if err == nil {
			_, err = st.Define(d)
		}
		if err != nil {
			st.Close()
			return err
		}
	}
	st.Close()
	populate := time.Since(t0)
	timeIt := func(env env, stdin func(int) string, args ...string) (time.Duration, error) {
		var ts []time.Duration
		for i := 0; i < 20; i++ {
			t0 := time.Now()
			if err := b.mv(env, stdin(i), args...); err != nil {
				return 0, err
			}
			ts = append(ts, time.Since(t0))
		}
		return median(ts), nil
	}
	none := func(int) string { return "" }
	def := func(prefix string) func(int) string {
		return func(i int) string {
			return fmt.Sprintf(`<domain type='qemu'><name>%s%d</name><memory>65536</memory><os><kernel>/k</kernel></os></domain>`, prefix, i)
		}
	}
	b.mv(empty, def("seed")(0), "define", "-")
	listEmpty, err := timeIt(empty, none, "list", "--all")
	if err != nil {
		return err
	}
	listFull, err := timeIt(full, none, "list", "--all")
	if err != nil {
		return err
	}
	defEmpty, err := timeIt(empty, def("new"), "define", "-")
	if err != nil {
		return err
	}
	defFull, err := timeIt(full, def("new"), "define", "-")
	if err != nil {
		return err
	}
	fmt.Printf("## CLI with %d defined domains (median of 20 runs, whole process)\n\n", *domains)
	fmt.Printf("| command | 1 domain (ms) | %d domains (ms) | ratio |\n|---|---|---|---|\n", *domains)
	fmt.Printf("| list --all | %.1f | %.1f | %.2fx |\n", ms(listEmpty), ms(listFull), float64(listFull)/float64(listEmpty))
	fmt.Printf("| define | %.1f | %.1f | %.2fx |\n\n", ms(defEmpty), ms(defFull), float64(defFull)/float64(defEmpty))
	fmt.Printf("(%d definitions stored in %.1f s through pkg/store, one transaction each.)\n\n", *domains, populate.Seconds())
	fmt.Printf("Target: list --all with %d domains under 50 ms: %s\n", *domains, map[bool]string{true: "met", false: "MISSED"}[listFull < 50*time.Millisecond])
	return nil
}

type env struct{ state, run string }

func (b *bench) env(name string) env {
	return env{state: filepath.Join(b.dir, name, "state"), run: filepath.Join(b.dir, name, "run")}
}

func (b *bench) mv(e env, stdin string, args ...string) error {
	_, err := b.mvIn(e, stdin, args...)
	return err
}

func (b *bench) mvOut(e env, args ...string) (string, error) { return b.mvIn(e, "", args...) }

func (b *bench) mvIn(e env, stdin string, args ...string) (string, error) {
	cmd := exec.Command(b.bin, append([]string{"--state-dir", e.state, "--run-dir", e.run}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), fmt.Errorf("minivirt %s: %s", strings.Join(args, " "), ee.Stderr)
	}
	return string(out), err
}

func waitReady(log string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if data, _ := os.ReadFile(log); strings.Contains(string(data), "minivirt-guest: ready") {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the guest did not come up (see %s)", log)
}

func rssOf(pid int) uint64 {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
func mb(b uint64) float64        { return float64(b) / 1e6 }

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

func numCPU() int {
	data, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(data), "processor\t:")
}

func memTotal() string {
	data, _ := os.ReadFile("/proc/meminfo")
	l := firstLine(string(data))
	return strings.Join(strings.Fields(l)[1:], " ") + " memory"
}
