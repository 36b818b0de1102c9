package main

import (
	"encoding/json"
	"fmt"
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
	"github.com/minivirt/minivirt/pkg/launcher"
)

// side is one way of carrying the guest's connections to the host, with the
// guest-side addresses of its four services and the processes whose memory
// it costs.
type side struct {
	name    string
	console string
	echo    string // one byte back
	bulk    string // a sink that counts
	source  string // sends what the guest asks for
	hold    string // keeps connections open ("" where not measured)
	pids    func() []int
	stop    func()
	figs    map[string][]float64 // measurements by figure, one per round
	pss256  uint64
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

// minivirtSide boots the tiny guest through minivirt with four vmchannels.
func (b *bench) minivirtSide(name, devices, metadata string) (*side, error) {
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
	return &side{name: name, console: filepath.Join(env.run, name, "console.sock"),
		echo: "10.0.2.4:600", bulk: "10.0.2.4:601", hold: "10.0.2.4:602", source: "10.0.2.4:603",
		pids: func() []int {
			helpers := testenv.Processes(func(argv []string) bool { return len(argv) > 1 && argv[1] == launcher.HelperCommand })
			return append([]int{st.SupervisorPID}, helpers...)
		},
		stop: func() { b.mv(env, "", "destroy", name) },
	}, nil
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
	return &side{name: "socat", console: console, echo: "10.0.2.4:600", bulk: "10.0.2.4:601", hold: "10.0.2.4:602",
		source: "10.0.2.4:603", pids: socats, stop: stop}, nil
}

// tcpSide is plain user-mode TCP from the slirp guest to host TCP ports:
// the ceiling of QEMU's user network, with no relay at all.
func (b *bench) tcpSide(slirp *side) *side {
	return &side{name: "tcp", console: slirp.console, echo: fmt.Sprintf("10.0.2.2:%d", b.echoTCP),
		bulk: fmt.Sprintf("10.0.2.2:%d", b.bulkTCP), source: fmt.Sprintf("10.0.2.2:%d", b.sourceTCP), stop: func() {}}
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
			// The TCP side shares the slirp guest's console, which serves
			// one client at a time: the order keeps them apart.
			p50, p99, err := latencyRun(s.console, s.echo, n)
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
			rate, err := rateRun(s.console, s.echo)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			if r == 0 {
				continue
			}
			for fig, v := range map[string]float64{figP50: p50, figP99: p99, figBulkOut: out, figBulkIn: in, figRate: rate} {
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

func latencyRun(console, addr string, n int) (float64, float64, error) {
	out, rc, err := testenv.ConsoleExec(console, fmt.Sprintf("minivirt-guest latency %d %s", n, addr), 10*time.Minute)
	m := latencyLine.FindStringSubmatch(out)
	if err != nil || rc != 0 || m == nil {
		return 0, 0, fmt.Errorf("latency to %s: %v, exit %d: %s", addr, err, rc, out)
	}
	p50, _ := strconv.ParseFloat(m[1], 64)
	p99, _ := strconv.ParseFloat(m[2], 64)
	return p50, p99, nil
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

func rateRun(console, addr string) (float64, error) {
	out, rc, err := testenv.ConsoleExec(console, fmt.Sprintf("minivirt-guest rate %d %s", *rateSeconds, addr), 10*time.Minute)
	m := rateLine.FindStringSubmatch(out)
	if err != nil || rc != 0 || m == nil {
		return 0, fmt.Errorf("rate to %s: %v, exit %d: %s", addr, err, rc, out)
	}
	return strconv.ParseFloat(m[2], 64)
}

// holdRun has the guest open n connections and keep them, waits until the
// host has accepted them all, and sums the PSS of pids(): shared pages
// count once, divided among the processes that share them.
func (b *bench) holdRun(s *side, n int) (uint64, error) {
	for len(b.holds) > 0 {
		<-b.holds
	}
	if _, _, err := testenv.ConsoleExec(s.console, fmt.Sprintf("minivirt-guest hold %d %s > /tmp/hold.log 2>&1 & true", n, s.hold), time.Minute); err != nil {
		return 0, err
	}
	deadline := time.After(5 * time.Minute)
	for i := 0; i < n; i++ {
		select {
		case <-b.holds:
		case <-deadline:
			out, _, _ := testenv.ConsoleExec(s.console, "cat /tmp/hold.log", time.Minute)
			return 0, fmt.Errorf("%d of %d held connections arrived: %s", i, n, out)
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
	var pss uint64
	for _, pid := range s.pids() {
		pss += pssOf(pid)
	}
	testenv.ConsoleExec(s.console, "kill $!; wait $!", time.Minute)
	return pss, nil
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

// dataPathReport prints the data-path table and the ratios between sides,
// each from medians of the same rounds.
func (b *bench) dataPathReport(ns, ns1500, slirp, socat, tcp *side) {
	fmt.Printf("## vmchannel data path\n\n")
	fmt.Printf("Median [min–max] of %d rounds after a discarded warm-up round; in each round every side runs in turn, the order rotating: latency over %d connections (one byte each way), one %d MiB stream each way, %d s of connections on 4 guest workers. All sides run on %s.\n\n",
		*reps, *latencyN, *bulkSize>>20, *rateSeconds, b.accel)
	cols := []*side{ns, ns1500, slirp, socat, tcp}
	fmt.Printf("| figure | netstack (MTU 65520) | netstack (MTU 1500) | slirp + helper | guestfwd cmd:socat | plain user-mode TCP |\n|---|---|---|---|---|---|\n")
	for _, fig := range roundFigures {
		format := "%.1f"
		if fig == figP50 || fig == figP99 {
			format = "%.2f"
		}
		row := "| " + fig
		for _, s := range cols {
			row += " | " + statOf(s.figs[fig]).cell(format)
		}
		fmt.Println(row + " |")
	}
	row := "| PSS with 256 open connections (MB)"
	for _, s := range cols {
		if s.pss256 == 0 {
			row += " | -"
		} else {
			row += fmt.Sprintf(" | %.1f", float64(s.pss256)/1e6)
		}
	}
	fmt.Println(row + " |")
	fmt.Printf("\nPSS counts each side's own processes, shared pages divided among the processes that share them: minivirt's supervisor (and any helper still alive), or every socat QEMU spawned. QEMU itself is common to all sides and left out.\n\n")

	med := func(s *side, fig string) float64 { return statOf(s.figs[fig]).med }
	fmt.Printf("### Ratios (medians of the same rounds)\n\n| figure | netstack / socat | netstack / TCP | netstack 1500 / socat | slirp / socat |\n|---|---|---|---|---|\n")
	ratio := func(a, b float64) string {
		if b == 0 || a == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	for _, fig := range roundFigures {
		fmt.Printf("| %s | %s | %s | %s | %s |\n", fig, ratio(med(ns, fig), med(socat, fig)), ratio(med(ns, fig), med(tcp, fig)),
			ratio(med(ns1500, fig), med(socat, fig)), ratio(med(slirp, fig), med(socat, fig)))
	}
	fmt.Printf("| PSS, 256 connections | %s | - | %s | %s |\n\n", ratio(float64(ns.pss256), float64(socat.pss256)),
		ratio(float64(ns1500.pss256), float64(socat.pss256)), ratio(float64(slirp.pss256), float64(socat.pss256)))

	b.targets = append(b.targets,
		target{"netstack latency p50 at most 1.0x plain user-mode TCP", med(ns, figP50) <= med(tcp, figP50), ratio(med(ns, figP50), med(tcp, figP50))},
		target{"netstack latency p50 at most 0.3x socat", med(ns, figP50) <= 0.3*med(socat, figP50), ratio(med(ns, figP50), med(socat, figP50))},
		target{"netstack bulk (guest to host) at least 2x socat at its default MTU", med(ns, figBulkOut) >= 2*med(socat, figBulkOut),
			ratio(med(ns, figBulkOut), med(socat, figBulkOut)) + "; at MTU 1500: " + ratio(med(ns1500, figBulkOut), med(socat, figBulkOut))},
		target{"PSS with 256 open connections at most 0.02x socat's helpers", float64(ns.pss256) <= 0.02*float64(socat.pss256), ratio(float64(ns.pss256), float64(socat.pss256))},
	)
}
