package manager

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/rundir"
	"github.com/minivirt/minivirt/pkg/supervisor"
)

// A start whose QEMU refuses to run is unwound step by step: no runtime
// directory, no socket, no record of the ledger is left, and the record
// says why the start failed, in QEMU's words.
func TestFailedStartUnwinds(t *testing.T) {
	m := defineFake(t, "exit", `<channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>`)
	_, err := m.Start(deadline(t, 30*time.Second), "fake", StartOptions{})
	var se *supervisor.StepError
	if !errors.As(err, &se) || se.Step != "connect QMP" || !strings.Contains(err.Error(), "refusing to start") {
		t.Fatalf("start = %v; want the QMP step to fail in QEMU's words", err)
	}
	left, _ := os.ReadDir(m.RunDir)
	if len(left) != 0 {
		var names []string
		for _, e := range left {
			names = append(names, e.Name())
		}
		t.Errorf("the runtime root holds %v after a failed start", names)
	}
	_, o, err := m.Observe("fake")
	if err != nil || o.State != "shut off" || o.Reason != "failed" || !strings.Contains(o.Detail, "refusing to start") {
		t.Errorf("record after a failed start: %+v, %v", o.Runtime, err)
	}
	if _, err := os.Stat(filepath.Join(m.RunDir, "fake")); !os.IsNotExist(err) {
		t.Errorf("runtime directory: %v", err)
	}
}

// Live changes, one at a time or many at once, leave the status listing
// exactly what the network serves, and the definition as the scope says.
func TestLiveChangesMatchStatus(t *testing.T) {
	svc := filepath.Join(t.TempDir(), "svc.sock")
	m, name := fakeDomain(t, "normal",
		`<channel type='unix'><source mode='connect' path='`+svc+`'/><target type='guestfwd' address='10.0.2.4' port='600'/></channel>`,
		`<vmchannels network='netstack'/>`)
	ctx := deadline(t, 60*time.Second)
	listed := func() map[netip.AddrPort]string {
		t.Helper()
		st, err := m.Status(ctx, name)
		if err != nil || st.Live == nil {
			t.Fatalf("status: %v", err)
		}
		out := map[netip.AddrPort]string{}
		for _, c := range st.Live.VMChannels {
			out[c.AddrPort()] = c.Path
		}
		return out
	}
	defined := func() int {
		d, err := m.Get(name)
		if err != nil {
			t.Fatal(err)
		}
		return len(d.VMChannels())
	}
	// Beside the guestfwd channel: the added one is returned, both listed.
	added, err := m.AddVMChannel(ctx, name, domain.VMChannel{Port: 601, Path: svc}, Scope{Live: true})
	if err != nil || added.AddrPort() != netip.MustParseAddrPort("10.0.2.4:601") || added.MaxConnections != domain.DefaultMaxConnections {
		t.Fatalf("live add beside a guestfwd channel: %+v, %v", added, err)
	}
	if l := listed(); len(l) != 2 || l[netip.MustParseAddrPort("10.0.2.4:600")] != svc {
		t.Errorf("after a live add: %v", l)
	}
	if n := defined(); n != 1 {
		t.Errorf("a live-only add changed the definition: %d channels", n)
	}
	// Many at once, live and in the definition.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := m.AddVMChannel(ctx, name, domain.VMChannel{Port: uint16(700 + i), Path: svc}, Scope{Live: true, Config: true}); err != nil {
				t.Errorf("add %d: %v", 700+i, err)
			}
		}()
	}
	wg.Wait()
	if l, n := listed(), defined(); len(l) != 22 || n != 21 {
		t.Errorf("after 20 concurrent adds: %d listed, %d defined; want 22 and 21", len(l), n)
	}
	// A refused change changes nothing.
	if _, err := m.AddVMChannel(ctx, name, domain.VMChannel{Port: 700, Path: svc}, Scope{Live: true}); err == nil {
		t.Error("adding port 700 twice succeeded")
	}
	if _, err := m.RemoveVMChannel(ctx, name, 999, netip.Addr{}, Scope{Live: true}); err == nil {
		t.Error("removing an absent vmchannel succeeded")
	}
	if l := listed(); len(l) != 22 {
		t.Errorf("after refused changes: %d listed", len(l))
	}
	// Removing the guestfwd channel live stops it being served.
	gone, err := m.RemoveVMChannel(ctx, name, 600, netip.Addr{}, Scope{Live: true})
	if err != nil || gone.Path != svc {
		t.Fatalf("live remove of the guestfwd channel: %+v, %v", gone, err)
	}
	l := listed()
	if _, ok := l[netip.MustParseAddrPort("10.0.2.4:600")]; ok || len(l) != 21 {
		t.Errorf("after removing port 600: %v", l)
	}
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := m.RemoveVMChannel(ctx, name, uint16(700+i), netip.Addr{}, Scope{Live: true}); err != nil {
				t.Errorf("remove %d: %v", 700+i, err)
			}
		}()
	}
	wg.Wait()
	if l := listed(); len(l) != 1 || l[netip.MustParseAddrPort("10.0.2.4:601")] != svc {
		t.Errorf("after removing them all: %v", l)
	}
	if n := defined(); n != 21 {
		t.Errorf("live removes changed the definition: %d", n)
	}
	if _, err := m.Destroy(ctx, name); err != nil {
		t.Fatal(err)
	}
	// The supervisor runs in this process: its clean-up may still be under
	// way when Destroy returns.
	var entries []os.DirEntry
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if entries, _ = os.ReadDir(rundir.SocketLedger(m.RunDir).Dir); len(entries) == 0 {
			break
		}
	}
	if len(entries) != 0 {
		t.Errorf("the socket ledger keeps %d records after destroy", len(entries))
	}
}
