package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/launcher"
)

// side is one way of carrying the guest's connections to the host, with the
// guest-side addresses of its four services and the processes whose memory
// it costs.
type side struct {
	name    string
	label   string // its column's heading
	console string
	echo    string // one byte back
	bulk    string // a sink that counts
	source  string // sends what the guest asks for
	hold    string // keeps connections open ("" where not measured)
	pids    func() []int
	stop    func()
	backend func() string        // the network backend QEMU runs, for the report (nil: none to show)
	figs    map[string][]float64 // measurements by figure, one per round
	pss0    uint64               // PSS of pids() right before the held connections open
	pss256  uint64               // and with them open
}

// Figures measured in every round.
const (
	figP50     = "latency p50 (ms)"
	figP99     = "latency p99 (ms)"
	figBulkOut = "bulk guest to host (MB/s)"
	figBulkIn  = "bulk host to guest (MB/s)"
	figRate    = "connections per second"
)

var roundFigures = []string{figP50, figP99, figBulkOut, figBulkIn, figRate}

// Evidence of what bounds the figures: how busy the guest's one vCPU was,
// from the guest's own /proc/stat around the run.
const (
	figBusyLatency = "guest vCPU busy in the latency run (%)"
	figBusyRate    = "guest vCPU busy in the connection-rate run (%)"
)

var busyFigures = []string{figBusyLatency, figBusyRate}

// minivirtSide boots the tiny guest through minivirt with four vmchannels;
// metadata picks the network, its backend and its MTU.
func (b *bench) minivirtSide(name, label, devices, metadata string) (*side, error) {
	env := b.env(name)
	xml := fmt.Sprintf(`<domain type='%s'><name>%s</name><memory unit='MiB'>256</memory>%s
<os><kernel>%s</kernel><initrd>%s</initrd><cmdline>%s</cmdline></os><devices>%s
<interface type='vmchannel'><source port='600'/><target path='%s'/></interface>
<interface type='vmchannel'><source port='601'/><target path='%s'/></interface>
<interface type='vmchannel'><source port='602'/><target path='%s' maxconnections='1024'/></interface>
<interface type='vmchannel'><source port='603'/><target path='%s'/></interface>
</devices></domain>`, b.domainType, name, metadata, b.kernel, b.initrd, b.cmdline(), devices, b.echoPath, b.bulkPath, b.holdPath, b.sourcePath)
	if err := b.mv(env, xml, "define", "-"); err != nil {
		return nil, err
	}
	if err := b.mv(env, "", "start", name); err != nil {
		return nil, err
	}
	if err := waitReady(filepath.Join(env.state, "logs", name+".log")); err != nil {
		b.mv(env, "", "destroy", name)
		return nil, err
	}
	var st struct {
		SupervisorPID int `json:"supervisor_pid"`
	}
	out, _ := b.mvOut(env, "status", name, "-o", "json")
	json.Unmarshal([]byte(out), &st)
	return &side{name: name, label: label, console: filepath.Join(env.run, name, "console.sock"),
		echo: "10.0.2.4:600", bulk: "10.0.2.4:601", hold: "10.0.2.4:602", source: "10.0.2.4:603",
		pids: func() []int {
			helpers := testenv.Processes(func(argv []string) bool { return len(argv) > 1 && argv[1] == launcher.HelperCommand })
			return append([]int{st.SupervisorPID}, helpers...)
		},
		stop:    func() { b.mv(env, "", "destroy", name) },
		backend: func() string { return qemuBackend(env.run) },
	}, nil
}

// metadata is minivirt's <metadata> element with the given attributes of
// <vmchannels>.
func metadata(attrs string) string {
	return fmt.Sprintf("<metadata><vmchannels xmlns='%s' %s/></metadata>", domain.Namespace, attrs)
}

// qemuBackend names the network backend of the QEMU whose argv mentions
// path (a minivirt side's run directory, where its pidfile lies, or the
// socat side's console), from its -netdev: what a side really ran,
// whatever its definition asked for.
func qemuBackend(path string) string {
	kind := "?"
	mentions := testenv.Mentioning(path)
	testenv.Processes(func(argv []string) bool {
		if !mentions(argv) {
			return false
		}
		for i := 0; i+1 < len(argv); i++ {
			if argv[i] == "-netdev" {
				kind, _, _ = strings.Cut(argv[i+1], ",")
				return true
			}
		}
		return false
	})
	return kind
}

// socatSide boots the same guest under bare QEMU whose guestfwd rules run
// socat per connection, as one would without minivirt, on the same
// accelerator as minivirt's sides.
func (b *bench) socatSide() (*side, error) {
	console := filepath.Join(b.dir, "socat-console.sock")
	rule := func(port int, path string) string {
		return fmt.Sprintf("guestfwd=tcp:10.0.2.4:%d-cmd:socat - UNIX-CONNECT:%s", port, path)
	}
	cpu := map[string]string{"kvm": "host", "tcg": "max"}[b.accel]
	argv := []string{"-machine", "q35", "-accel", b.accel, "-cpu", cpu, "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-kernel", b.kernel, "-initrd", b.initrd, "-append", b.cmdline(),
		"-chardev", "socket,id=s0,path=" + console + ",server=on,wait=off,logfile=" + filepath.Join(b.dir, "socat.log"),
		"-serial", "chardev:s0",
		"-netdev", "user,id=n0," + strings.Join([]string{rule(600, b.echoPath), rule(601, b.bulkPath), rule(602, b.holdPath), rule(603, b.sourcePath)}, ","),
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
	stop := func() {
		cmd.Process.Kill()
		cmd.Wait()
		for _, pid := range socats() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if err := waitReady(filepath.Join(b.dir, "socat.log")); err != nil {
		stop()
		return nil, err
	}
	return &side{name: "socat", label: "guestfwd cmd:socat", console: console, echo: "10.0.2.4:600", bulk: "10.0.2.4:601", hold: "10.0.2.4:602",
		source: "10.0.2.4:603", pids: socats, stop: stop, backend: func() string { return qemuBackend(console) }}, nil
}

// tcpSide is plain user-mode TCP from the guest of user (a side on QEMU's
// user network) to host TCP ports: the ceiling of QEMU's user network, with
// no relay at all. It shares user's console, so its runs take turns with
// user's.
func (b *bench) tcpSide(user *side) *side {
	return &side{name: "tcp", label: "plain user-mode TCP", console: user.console, echo: fmt.Sprintf("10.0.2.2:%d", b.echoTCP),
		bulk: fmt.Sprintf("10.0.2.2:%d", b.bulkTCP), source: fmt.Sprintf("10.0.2.2:%d", b.sourceTCP), stop: func() {}, backend: user.backend}
}

// loopbackSide starts the benchmark's services inside host's guest, on the
// guest's own loopback, and points the same clients at them: two processes
// in one guest and no network path, the limit no side can beat. It shares
// host's console, so its runs take turns with host's.
func (b *bench) loopbackSide(host *side) (*side, error) {
	const echo, sink, source = "127.0.0.1:7600", "127.0.0.1:7601", "127.0.0.1:7603"
	cmd := fmt.Sprintf("minivirt-guest serve echo=%s sink=%s source=%s", echo, sink, source)
	out, rc, err := testenv.ConsoleExec(host.console, cmd, time.Minute)
	if err != nil || rc != 0 {
		return nil, fmt.Errorf("%s in %s's guest: %v, exit %d: %s (a guest from before `minivirt-guest serve`? make guest)", cmd, host.name, err, rc, out)
	}
	return &side{name: "loopback", label: "loopback in the guest", console: host.console,
		echo: echo, bulk: sink, source: source, stop: func() {}}, nil
}

// rounds measures every side in every round, the sides' order rotating
// from round to round; round 0 warms up and is discarded.
func (b *bench) rounds(sides []*side) error {
	for _, s := range sides {
		s.figs = map[string][]float64{}
	}
	for r := 0; r <= *reps; r++ {
		n := *latencyN
		if r == 0 {
			n = 100
		}
		for i := range sides {
			s := sides[(i+r)%len(sides)]
			// The TCP and loopback sides share the socat guest's console,
			// which serves one client at a time: the order keeps them apart.
			p50, p99, busyLat, err := latencyRun(s.console, s.echo, n)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			out, err := bulkRun(s.console, "bulk", s.bulk)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			in, err := bulkRun(s.console, "bulkin", s.source)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			rate, busyRate, err := rateRun(s.console, s.echo)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			if r == 0 {
				continue
			}
			for fig, v := range map[string]float64{figP50: p50, figP99: p99, figBulkOut: out, figBulkIn: in, figRate: rate,
				figBusyLatency: busyLat, figBusyRate: busyRate} {
				s.figs[fig] = append(s.figs[fig], v)
			}
		}
		fmt.Fprintf(os.Stderr, "e2e: round %d of %d done\n", r, *reps)
	}
	return nil
}

var (
	latencyLine = regexp.MustCompile(`latency n=\d+ p50=([\d.]+)ms p99=([\d.]+)ms`)
	bulkLine    = regexp.MustCompile(`bulk(?:in)? bytes=(\d+) .*MBps=([\d.]+)`)
	rateLine    = regexp.MustCompile(`rate ok=\d+ failed=(\d+) seconds=[\d.]+ per_second=([\d.]+)`)
)

func latencyRun(console, addr string, n int) (float64, float64, float64, error) {
	out, rc, err := testenv.ConsoleExec(console, withCPU(fmt.Sprintf("minivirt-guest latency %d %s", n, addr)), 10*time.Minute)
	m := latencyLine.FindStringSubmatch(out)
	if err != nil || rc != 0 || m == nil {
		return 0, 0, 0, fmt.Errorf("latency to %s: %v, exit %d: %s", addr, err, rc, out)
	}
	p50, _ := strconv.ParseFloat(m[1], 64)
	p99, _ := strconv.ParseFloat(m[2], 64)
	return p50, p99, busyOf(out), nil
}

// withCPU wraps a guest command with the guest's CPU counters before and
// after it, keeping its exit status (in a subshell: the console's shell
// must go on).
func withCPU(cmd string) string {
	return "head -1 /proc/stat; " + cmd + "; rc=$?; head -1 /proc/stat; (exit $rc)"
}

// busyOf is the share of the guest's CPU time that was not idle between
// the first and last "cpu" lines of out, in percent.
func busyOf(out string) float64 {
	var lines [][]string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 5 && f[0] == "cpu" {
			lines = append(lines, f[1:])
		}
	}
	if len(lines) < 2 {
		return 0
	}
	sum := func(f []string) (total, idle float64) {
		for i, v := range f {
			n, _ := strconv.ParseFloat(v, 64)
			total += n
			if i == 3 || i == 4 { // idle, iowait
				idle += n
			}
		}
		return
	}
	t0, i0 := sum(lines[0])
	t1, i1 := sum(lines[len(lines)-1])
	if t1 <= t0 {
		return 0
	}
	return 100 * (1 - (i1-i0)/(t1-t0))
}

// bulkRun streams *bulkSize bytes: guest to host (mode bulk) or host to
// guest (mode bulkin).
func bulkRun(console, mode, addr string) (float64, error) {
	out, rc, err := testenv.ConsoleExec(console, fmt.Sprintf("minivirt-guest %s %d %s", mode, *bulkSize, addr), 10*time.Minute)
	m := bulkLine.FindStringSubmatch(out)
	if err != nil || rc != 0 || m == nil || m[1] != strconv.Itoa(*bulkSize) {
		return 0, fmt.Errorf("%s to %s: %v, exit %d: %s", mode, addr, err, rc, out)
	}
	return strconv.ParseFloat(m[2], 64)
}

func rateRun(console, addr string) (float64, float64, error) {
	out, rc, err := testenv.ConsoleExec(console, withCPU(fmt.Sprintf("minivirt-guest rate %d %s", *rateSeconds, addr)), 10*time.Minute)
	m := rateLine.FindStringSubmatch(out)
	if err != nil || rc != 0 || m == nil {
		return 0, 0, fmt.Errorf("rate to %s: %v, exit %d: %s", addr, err, rc, out)
	}
	v, err := strconv.ParseFloat(m[2], 64)
	return v, busyOf(out), err
}

// holdRun has the guest open n connections and keep them, waits until the
// host has accepted them all, and sums the PSS of pids() (shared pages
// count once, divided among the processes that share them) right before
// the connections open and with them all open.
func (b *bench) holdRun(s *side, n int) (before, held uint64, err error) {
	for len(b.holds) > 0 {
		<-b.holds
	}
	before = pssSum(s.pids())
	if _, _, err := testenv.ConsoleExec(s.console, fmt.Sprintf("minivirt-guest hold %d %s > /tmp/hold.log 2>&1 & true", n, s.hold), time.Minute); err != nil {
		return 0, 0, err
	}
	deadline := time.After(5 * time.Minute)
	for i := 0; i < n; i++ {
		select {
		case <-b.holds:
		case <-deadline:
			out, _, _ := testenv.ConsoleExec(s.console, "cat /tmp/hold.log", time.Minute)
			return 0, 0, fmt.Errorf("%d of %d held connections arrived: %s", i, n, out)
		}
	}
	// The last helpers hand over and exit: wait until their number is still.
	prev := -1
	for i := 0; i < 50; i++ {
		if cur := len(s.pids()); cur == prev {
			break
		} else {
			prev = cur
		}
		time.Sleep(100 * time.Millisecond)
	}
	held = pssSum(s.pids())
	testenv.ConsoleExec(s.console, "kill $!; wait $!", time.Minute)
	return before, held, nil
}

// pssSum is the summed PSS of pids.
func pssSum(pids []int) uint64 {
	var pss uint64
	for _, pid := range pids {
		pss += pssOf(pid)
	}
	return pss
}

// pssOf is a process's proportional set size, from smaps_rollup.
func pssOf(pid int) uint64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// stat is the median and range of one figure over the rounds.
type stat struct{ med, lo, hi float64 }

func statOf(v []float64) stat {
	if len(v) == 0 {
		return stat{}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return stat{med: s[len(s)/2], lo: s[0], hi: s[len(s)-1]}
}

func (s stat) cell(format string) string {
	if s.med == 0 {
		return "-"
	}
	return fmt.Sprintf(format+" ["+format+"–"+format+"]", s.med, s.lo, s.hi)
}

// dataPath is the data path's sides, by role.
type dataPath struct {
	vh, vh1500, st, st1500, socat, tcp, lo *side
}

// columns are the sides in the report's order.
func (p dataPath) columns() []*side {
	return []*side{p.vh, p.vh1500, p.st, p.st1500, p.socat, p.tcp, p.lo}
}

// heldConns is how many idle connections the PSS figures hold open.
const heldConns = 256

// dataPathFigures boots every side once (they stay up: the rounds
// interleave them), measures them, holds connections open on the sides
// whose processes are counted, and prints the report.
func (b *bench) dataPathFigures() error {
	start := time.Now()
	var booted []*side
	defer func() {
		for _, s := range booted {
			s.stop()
		}
	}()
	boot := func(s *side, err error) (*side, error) {
		if err == nil {
			booted = append(booted, s)
		}
		return s, err
	}
	var p dataPath
	var err error
	for _, m := range []struct {
		s                  **side
		name, label, attrs string
	}{
		// No backend attribute: the default, vhost-user.
		{&p.vh, "vhostuser", "vhost-user (MTU 65520)", "network='netstack'"},
		{&p.vh1500, "vhostuser1500", "vhost-user (MTU 1500)", "network='netstack' mtu='1500'"},
		{&p.st, "stream", "-netdev stream (MTU 65520)", "network='netstack' backend='stream'"},
		{&p.st1500, "stream1500", "-netdev stream (MTU 1500)", "network='netstack' backend='stream' mtu='1500'"},
	} {
		if *m.s, err = boot(b.minivirtSide(m.name, m.label, "", metadata(m.attrs))); err != nil {
			return fmt.Errorf("%s side: %w", m.label, err)
		}
	}
	if p.socat, err = boot(b.socatSide()); err != nil {
		return fmt.Errorf("socat side: %w", err)
	}
	p.tcp = b.tcpSide(p.socat)
	if p.lo, err = b.loopbackSide(p.socat); err != nil {
		return fmt.Errorf("loopback side: %w", err)
	}
	if err := b.rounds(p.columns()); err != nil {
		return err
	}
	for _, s := range p.columns() {
		if s.hold == "" {
			continue
		}
		if s.pss0, s.pss256, err = b.holdRun(s, heldConns); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	b.dataPathReport(p, time.Since(start))
	return nil
}

// perConn is the PSS one idle open connection costs a side, in bytes:
// what holding heldConns added, divided among them; ok is false where
// nothing was measured.
func (s *side) perConn() (v float64, ok bool) {
	if s.pss256 == 0 {
		return 0, false
	}
	return (float64(s.pss256) - float64(s.pss0)) / heldConns, true
}

// ratio prints a/b, or "-" when either is missing.
func ratio(a, b float64) string {
	if b == 0 || a == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// dataPathReport prints the data-path table, the ratios of vhost-user to
// each other side at both MTUs, and the targets, each from medians of the
// same rounds.
func (b *bench) dataPathReport(p dataPath, took time.Duration) {
	fmt.Printf("## vmchannel data path\n\n")
	fmt.Printf("Median [min–max] of %d rounds after a discarded warm-up round; in each round every side runs in turn, the order rotating: latency over %d connections (one byte each way), one %d MiB stream each way, %d s of connections on 4 guest workers. Every side runs the same runs. All sides run on %s.\n\n",
		*reps, *latencyN, *bulkSize>>20, *rateSeconds, b.accel)
	fmt.Printf("The vhost-user sides name no backend (minivirt's default); the -netdev stream sides give backend='stream' in minivirt's metadata; MTU 1500 is mtu='1500'. The loopback side runs the same clients against the same services served by a second process inside the socat side's guest on 127.0.0.1, the limit no network path beats as long as the guest's CPU keeps up: with one vCPU its guest runs both ends (both processes, both TCP stacks), so where the guest's CPU is the bottleneck (TCG) a network side, whose far end runs on the host, can come out ahead. Plain user-mode TCP runs from the socat side's guest too. The row QEMU -netdev is what each side's QEMU really ran.\n\n")
	cols := p.columns()
	head, rule := "| figure", "|---"
	for _, s := range cols {
		head += " | " + s.label
		rule += "|---"
	}
	fmt.Printf("%s |\n%s|\n", head, rule)
	for _, fig := range append(slices.Clone(roundFigures), busyFigures...) {
		format := "%.1f"
		if fig == figBusyLatency || fig == figBusyRate {
			format = "%.0f"
		}
		if fig == figP50 || fig == figP99 {
			format = "%.2f"
		}
		row := "| " + fig
		for _, s := range cols {
			row += " | " + statOf(s.figs[fig]).cell(format)
		}
		fmt.Println(row + " |")
	}
	rows := []struct {
		name string
		cell func(*side) string
	}{
		{"QEMU -netdev", func(s *side) string {
			if s.backend == nil {
				return "-"
			}
			return s.backend()
		}},
		{"PSS before the connections (MB)", func(s *side) string {
			if s.pss256 == 0 {
				return "-"
			}
			return fmt.Sprintf("%.1f", mb(s.pss0))
		}},
		{fmt.Sprintf("PSS with %d open connections (MB)", heldConns), func(s *side) string {
			if s.pss256 == 0 {
				return "-"
			}
			return fmt.Sprintf("%.1f", mb(s.pss256))
		}},
		{"PSS per idle open connection (KiB)", func(s *side) string {
			v, ok := s.perConn()
			if !ok {
				return "-"
			}
			return fmt.Sprintf("%.1f", v/1024)
		}},
	}
	for _, r := range rows {
		row := "| " + r.name
		for _, s := range cols {
			row += " | " + r.cell(s)
		}
		fmt.Println(row + " |")
	}
	fmt.Printf("\nPSS counts each side's own processes, shared pages divided among the processes that share them: minivirt's supervisor (and any helper still alive), or every socat QEMU spawned; it is taken right before the guest opens %d connections and with them all open, and the difference divided by %d is the cost of one idle connection. QEMU itself is common to all sides and left out.\n\n", heldConns, heldConns)
	if bv, sv := p.vh.backend(), p.st.backend(); bv == sv && bv != "?" {
		fmt.Printf("Note: the vhost-user sides ran -netdev %s, as the stream sides did: this minivirt has no vhost-user backend yet, and their ratios to stream are noise.\n\n", bv)
	}

	med := func(s *side, fig string) float64 { return statOf(s.figs[fig]).med }
	for _, m := range []struct {
		mtu    string
		vh, st *side
	}{{"65520", p.vh, p.st}, {"1500", p.vh1500, p.st1500}} {
		fmt.Printf("### Ratios at MTU %s (medians of the same rounds)\n\n", m.mtu)
		fmt.Printf("vhost-user at MTU %s over each other side (stream at the same MTU; socat and plain TCP run on QEMU's user network, MTU 1500; loopback is the guest's own). Latency and PSS: lower is better; bulk and connection rate: higher is better.\n\n", m.mtu)
		fmt.Printf("| figure | better | vhost-user / loopback | vhost-user / stream | vhost-user / plain TCP | vhost-user / socat |\n|---|---|---|---|---|---|\n")
		for _, fig := range roundFigures {
			better := "higher"
			if fig == figP50 || fig == figP99 {
				better = "lower"
			}
			v := med(m.vh, fig)
			fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", fig, better, ratio(v, med(p.lo, fig)), ratio(v, med(m.st, fig)),
				ratio(v, med(p.tcp, fig)), ratio(v, med(p.socat, fig)))
		}
		v, _ := m.vh.perConn()
		st, _ := m.st.perConn()
		socat, _ := p.socat.perConn()
		fmt.Printf("| PSS per idle open connection | lower | - | %s | - | %s |\n\n", ratio(v, st), ratio(v, socat))
	}

	// goal is one target: a ratio (or, with a unit, a value) and its limit.
	type goal struct {
		name   string
		got    float64
		ok     bool // got was measured
		limit  float64
		atMost bool
		unit   string // "x" for a ratio
	}
	over := func(name string, a, o *side, fig string, limit float64, atMost bool) goal {
		x, y := med(a, fig), med(o, fig)
		return goal{name: name, got: x / y, ok: x != 0 && y != 0, limit: limit, atMost: atMost, unit: "x"}
	}
	perConn, perConnOK := p.vh.perConn()
	goals := []goal{
		over("bulk guest to host at least 2.5x socat (MTU 65520)", p.vh, p.socat, figBulkOut, 2.5, false),
		over("bulk host to guest at least 2.5x socat (MTU 65520)", p.vh, p.socat, figBulkIn, 2.5, false),
		over("bulk guest to host at least 1.5x socat (MTU 1500)", p.vh1500, p.socat, figBulkOut, 1.5, false),
		over("bulk host to guest at least 1.5x socat (MTU 1500)", p.vh1500, p.socat, figBulkIn, 1.5, false),
		over("latency p50 at most 0.8x plain user-mode TCP", p.vh, p.tcp, figP50, 0.8, true),
		over("latency p50 at most 0.2x socat", p.vh, p.socat, figP50, 0.2, true),
		over("latency p99 at most 0.5x socat", p.vh, p.socat, figP99, 0.5, true),
		over("connections per second at least 5x socat", p.vh, p.socat, figRate, 5, false),
		{name: fmt.Sprintf("PSS per idle open connection at most 32 KiB ((PSS at %d - PSS at 0) / %d)", heldConns, heldConns),
			got: perConn / 1024, ok: perConnOK, limit: 32, atMost: true, unit: " KiB"},
	}
	fmt.Printf("### Targets (vhost-user, MTU 65520 unless named)\n\n| target | measured | result |\n|---|---|---|\n")
	for _, t := range goals {
		met := t.ok && (t.atMost && t.got <= t.limit || !t.atMost && t.got >= t.limit)
		got := "-"
		if t.ok {
			got = fmt.Sprintf("%.2f%s", t.got, t.unit)
		}
		result := map[bool]string{true: "met", false: "MISSED"}[met]
		fmt.Printf("| %s | %s | %s |\n", t.name, got, result)
		b.targets = append(b.targets, target{"vhost-user " + t.name, met, got})
	}
	fmt.Printf("\nThe data path took %s, from the first boot to the last held connection.\n\n", took.Round(time.Second))
}
