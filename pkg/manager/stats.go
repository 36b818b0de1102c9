package manager

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/supervisor"
	"github.com/minivirt/minivirt/pkg/vmchannel"
)

// Virsh's domain state numbers (virDomainState), as domstats' state.state
// shows them.
const (
	VirStateRunning  = 1
	VirStatePaused   = 3
	VirStateShutdown = 4 // being shut down
	VirStateShutoff  = 5
	VirStateCrashed  = 6
)

// clockTicks is the kernel's USER_HZ, the unit of /proc's CPU times: 100
// on every Linux architecture minivirt runs on.
const clockTicks = 100

// DomStats is one domain's statistics, virsh domstats' groups plus
// minivirt's own vmchannel and forward counters. A domain that does not
// run has its State only.
type DomStats struct {
	Name  string
	State int // VirStateRunning and so on
	// Running is set when the rest was read from a live QEMU.
	Running bool
	// CPUTime is QEMU's user and system time, in nanoseconds; HaveCPU is
	// false when /proc did not say (another user's QEMU).
	CPUTime uint64
	HaveCPU bool
	VCPUs   []VCPUStats
	// Balloon is nil when the domain has no balloon device.
	Balloon *BalloonStats
	Blocks  []BlockStats
	// Nets are minivirt's own network's; QEMU's user network counts
	// nothing and has none.
	Nets       []NetStats
	VMChannels []ChannelStatus
	Forwards   []ForwardStatus
}

// VCPUStats is one vCPU: its thread and the time it ran (nanoseconds;
// HaveTime false when /proc did not say).
type VCPUStats struct {
	Thread   int
	Time     uint64
	HaveTime bool
}

// BalloonStats are in KiB: Current is the balloon's actual size, Maximum
// the domain's memory.
type BalloonStats struct {
	Current, Maximum uint64
}

// BlockStats counts one disk's requests; Name is its target dev.
type BlockStats struct {
	Name                             string
	RdReqs, RdBytes, WrReqs, WrBytes uint64
}

// NetStats counts one interface's traffic, from the guest's point of view.
type NetStats struct {
	Name string
	supervisor.NICCounters
}

// StatField is one key=value of domstats' output.
type StatField struct {
	Key   string
	Value any // uint64, int or string
}

// DomStats reads a running domain's statistics: CPU time from QEMU's
// /proc entries, vCPUs (query-cpus-fast), balloon (query-balloon) and
// disks (query-blockstats) over QMP, and the network, vmchannel and
// forward counters from its supervisor. For a domain that does not run it
// returns the state only (shut off), as virsh does.
func (m *Manager) DomStats(ctx context.Context, name string) (DomStats, error) {
	st, err := m.LiveStatus(ctx, name)
	if err != nil {
		return DomStats{}, err
	}
	s := DomStats{Name: name, State: virState(st.State)}
	if !st.Active() || !st.QEMUAlive {
		s.State = VirStateShutoff
		return s, nil
	}
	s.Running = true
	pid := st.QEMU.PID
	s.CPUTime, s.HaveCPU = cpuTime("/proc/" + strconv.Itoa(pid) + "/stat")

	var cpus []struct {
		Thread int `json:"thread-id"`
	}
	if ok, err := m.query(ctx, name, "query-cpus-fast", &cpus); err != nil {
		return DomStats{}, err
	} else if ok {
		for _, c := range cpus {
			v := VCPUStats{Thread: c.Thread}
			v.Time, v.HaveTime = cpuTime(fmt.Sprintf("/proc/%d/task/%d/stat", pid, c.Thread))
			s.VCPUs = append(s.VCPUs, v)
		}
	}

	var balloon struct {
		Actual uint64 `json:"actual"`
	}
	if ok, err := m.query(ctx, name, "query-balloon", &balloon); err != nil {
		return DomStats{}, err
	} else if ok { // an error reply: no balloon device
		s.Balloon = &BalloonStats{Current: balloon.Actual / 1024, Maximum: uint64(st.Domain.Memory.Value)}
	}

	var blocks []qmpBlockStats
	if ok, err := m.query(ctx, name, "query-blockstats", &blocks); err != nil {
		return DomStats{}, err
	} else if ok {
		s.Blocks = matchBlocks(st.Domain, blocks)
	}

	if st.Live != nil {
		if st.Live.NIC != nil {
			s.Nets = []NetStats{{Name: "net0", NICCounters: *st.Live.NIC}}
		}
		s.VMChannels, s.Forwards = st.Live.VMChannels, st.Live.Forwards
	}
	return s, nil
}

// query runs a QMP command without arguments and decodes its return value
// into v. It reports false, without error, when QEMU answered with an
// error (the command or its device is not there).
func (m *Manager) query(ctx context.Context, name, command string, v any) (bool, error) {
	out, err := m.QMP(ctx, name, []byte(`{"execute":"`+command+`"}`))
	if err != nil {
		return false, err
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(out, &reply); err != nil {
		return false, fmt.Errorf("%s: QEMU's reply %q: %v", command, out, err)
	}
	if reply.Error != nil || reply.Return == nil {
		return false, nil
	}
	if err := json.Unmarshal(reply.Return, v); err != nil {
		return false, fmt.Errorf("%s: QEMU's reply %q: %v", command, out, err)
	}
	return true, nil
}

// qmpBlockStats is one entry of query-blockstats' reply.
type qmpBlockStats struct {
	Device string `json:"device"`
	QDev   string `json:"qdev"`
	Node   string `json:"node-name"`
	Stats  struct {
		RdBytes uint64 `json:"rd_bytes"`
		WrBytes uint64 `json:"wr_bytes"`
		RdOps   uint64 `json:"rd_operations"`
		WrOps   uint64 `json:"wr_operations"`
	} `json:"stats"`
}

// matchBlocks pairs the domain's disks, in their order, with QEMU's
// entries: the launcher names a disk's drive "drive-DEV" and its device
// DEV (the qdev path /machine/peripheral/DEV/...). Disks QEMU does not
// report are left out.
func matchBlocks(d *domain.Domain, stats []qmpBlockStats) []BlockStats {
	var out []BlockStats
	for _, disk := range d.Devices.Disks {
		dev := disk.Target.Dev
		for _, b := range stats {
			if b.Device != "drive-"+dev && b.Node != "drive-"+dev && b.QDev != dev &&
				!strings.HasPrefix(b.QDev, "/machine/peripheral/"+dev+"/") {
				continue
			}
			out = append(out, BlockStats{Name: dev, RdReqs: b.Stats.RdOps, RdBytes: b.Stats.RdBytes,
				WrReqs: b.Stats.WrOps, WrBytes: b.Stats.WrBytes})
			break
		}
	}
	return out
}

// cpuTime reads utime+stime of a /proc stat file, in nanoseconds.
func cpuTime(path string) (uint64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	// The command name (field 2) is in parentheses and may hold anything.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3; utime is field 14
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return (utime + stime) * (1e9 / clockTicks), true
}

// virState is virsh's number for a state minivirt records.
func virState(state string) int {
	switch state {
	case StateRunning:
		return VirStateRunning
	case StatePaused:
		return VirStatePaused
	case StateInShutdown:
		return VirStateShutdown
	case StateCrashed:
		return VirStateCrashed
	}
	return VirStateShutoff
}

// Fields are the statistics as domstats prints them, in its order.
func (s DomStats) Fields() []StatField {
	var f []StatField
	add := func(key string, v any) { f = append(f, StatField{key, v}) }
	add("state.state", s.State)
	if !s.Running {
		return f
	}
	if s.HaveCPU {
		add("cpu.time", s.CPUTime)
	}
	if s.Balloon != nil {
		add("balloon.current", s.Balloon.Current)
		add("balloon.maximum", s.Balloon.Maximum)
	}
	add("vcpu.current", len(s.VCPUs))
	for i, v := range s.VCPUs {
		if v.HaveTime {
			add(fmt.Sprintf("vcpu.%d.time", i), v.Time)
		}
	}
	if s.Nets != nil {
		add("net.count", len(s.Nets))
		for i, n := range s.Nets {
			p := fmt.Sprintf("net.%d.", i)
			add(p+"name", n.Name)
			add(p+"rx.bytes", n.RxBytes)
			add(p+"rx.pkts", n.RxPackets)
			add(p+"tx.bytes", n.TxBytes)
			add(p+"tx.pkts", n.TxPackets)
		}
	}
	add("block.count", len(s.Blocks))
	for i, b := range s.Blocks {
		p := fmt.Sprintf("block.%d.", i)
		add(p+"name", b.Name)
		add(p+"rd.reqs", b.RdReqs)
		add(p+"rd.bytes", b.RdBytes)
		add(p+"wr.reqs", b.WrReqs)
		add(p+"wr.bytes", b.WrBytes)
	}
	counters := func(p string, c vmchannel.Counters) {
		add(p+"active", c.Active)
		add(p+"total", c.Total)
		add(p+"refused", c.Refused)
		add(p+"bytes.in", c.BytesIn)
		add(p+"bytes.out", c.BytesOut)
	}
	for i, c := range s.VMChannels {
		p := fmt.Sprintf("vmchannel.%d.", i)
		add(p+"address", c.Address.String())
		add(p+"port", int(c.Port))
		add(p+"path", c.Path)
		counters(p, c.Counters)
	}
	for i, fw := range s.Forwards {
		p := fmt.Sprintf("forward.%d.", i)
		add(p+"name", fw.Forward.Name())
		add(p+"guest_port", int(fw.Forward.GuestPort))
		counters(p, fw.Counters)
	}
	return f
}
