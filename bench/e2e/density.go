package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// densityFigures starts 1, 4 and 16 idle vmchannel domains (netstack, 128
// MiB each) one after another and reports the start time p50, each
// supervisor's PSS, and the CPU minivirt's supervisors use while every
// guest idles; with the most domains running it times list and status.
func (b *bench) densityFigures() error {
	fmt.Printf("## Density: idle vmchannel domains (netstack, 128 MiB each)\n\n")
	fmt.Printf("| domains | start p50 (ms) | start max (ms) | supervisor PSS per domain (MB) | idle CPU, all supervisors (%% of a core) | idle CPU per supervisor (%% of a core) |\n|---|---|---|---|---|---|\n")
	var busy env
	var busyNames []string
	var worstIdle float64
	for _, field := range strings.Split(*density, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(field))
		if err != nil || n < 1 {
			return fmt.Errorf("-density %q: give numbers of domains", *density)
		}
		env := b.env(fmt.Sprintf("density%d", n))
		var starts []time.Duration
		var names []string
		stopAll := func() {
			for _, name := range names {
				b.mv(env, "", "destroy", name)
			}
		}
		for i := 0; i < n; i++ {
			name := fmt.Sprintf("d%02d", i)
			xml := fmt.Sprintf(`<domain type='%s'><name>%s</name><memory unit='MiB'>128</memory>
<os><kernel>%s</kernel><initrd>%s</initrd><cmdline>%s</cmdline></os><devices>
<interface type='vmchannel'><source port='600'/><target path='%s'/></interface></devices></domain>`, b.domainType, name, b.kernel, b.initrd, b.cmdline(), b.echoPath)
			if err := b.mv(env, xml, "define", "-"); err != nil {
				stopAll()
				return err
			}
			t0 := time.Now()
			if err := b.mv(env, "", "start", name); err != nil {
				stopAll()
				return err
			}
			starts = append(starts, time.Since(t0))
			names = append(names, name)
		}
		for _, name := range names {
			if err := waitReady(filepath.Join(env.state, "logs", name+".log")); err != nil {
				stopAll()
				return err
			}
		}
		time.Sleep(2 * time.Second) // the guests' boot work ends; then they idle
		var pids []int
		var pss uint64
		for _, name := range names {
			var st struct {
				SupervisorPID int `json:"supervisor_pid"`
			}
			out, _ := b.mvOut(env, "status", name, "-o", "json")
			json.Unmarshal([]byte(out), &st)
			pids = append(pids, st.SupervisorPID)
			pss += pssOf(st.SupervisorPID)
		}
		before := cpuTicks(pids)
		time.Sleep(time.Duration(*idleSeconds) * time.Second)
		used := float64(cpuTicks(pids)-before) / clockTicks / float64(*idleSeconds) * 100
		per := used / float64(n)
		worstIdle = max(worstIdle, per)
		sorted := append([]time.Duration(nil), starts...)
		fmt.Printf("| %d | %.1f | %.1f | %.1f | %.2f | %.3f |\n", n, ms(median(starts)), ms(maxDuration(sorted)), float64(pss)/float64(n)/1e6, used, per)
		if busyNames != nil {
			for _, name := range busyNames {
				b.mv(busy, "", "destroy", name)
			}
		}
		busy, busyNames = env, names
	}
	fmt.Printf("\nStart is the whole `minivirt start` command, one domain after another while the earlier ones boot. Idle CPU is the supervisors' user+system time over %d s once every guest printed ready.\n\n", *idleSeconds)
	b.targets = append(b.targets, target{"idle CPU of a supervisor below 0.5% of a core", worstIdle < 0.5, fmt.Sprintf("%.3f%% at most", worstIdle)})

	// A busy host: list and status with every domain of the last row running.
	timeIt := func(args ...string) (time.Duration, error) {
		var ts []time.Duration
		for i := 0; i < 20; i++ {
			t0 := time.Now()
			if err := b.mv(busy, "", args...); err != nil {
				return 0, err
			}
			ts = append(ts, time.Since(t0))
		}
		return median(ts), nil
	}
	list, err := timeIt("list", "--all")
	if err != nil {
		return err
	}
	status, err := timeIt("status", busyNames[0], "-o", "json")
	if err != nil {
		return err
	}
	fmt.Printf("## A busy host: %d domains running (median of 20 runs, whole process)\n\n| command | ms |\n|---|---|\n| list --all | %.1f |\n| status NAME -o json | %.1f |\n\n", len(busyNames), ms(list), ms(status))
	for _, name := range busyNames {
		b.mv(busy, "", "destroy", name)
	}
	return nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times (100 on Linux).
const clockTicks = 100

// cpuTicks sums user and system time of pids, in clock ticks.
func cpuTicks(pids []int) uint64 {
	var sum uint64
	for _, pid := range pids {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		s := string(data)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(fields) > 12 {
			u, _ := strconv.ParseUint(fields[11], 10, 64) // utime: field 14
			k, _ := strconv.ParseUint(fields[12], 10, 64) // stime: field 15
			sum += u + k
		}
	}
	return sum
}

func maxDuration(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
