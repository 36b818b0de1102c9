package manager

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/qga/qgatest"
)

// The fake QEMU of mode "agent" answers on the agent's channel as a Linux
// guest's qemu-ga does; the supervisor binds the channel's socket and
// hands it to the fake as it would to QEMU.
func TestAgentVerbs(t *testing.T) {
	m, name := fakeDomain(t, "agent", AgentChannelXML)
	ctx := deadline(t, 60*time.Second)

	info, err := m.GuestInfo(ctx, name, GuestInfoKinds{}, 0)
	if err != nil {
		t.Fatalf("GuestInfo: %v", err)
	}
	if info.Hostname != qgatest.HostName || info.OS == nil || info.OS.PrettyName != qgatest.PrettyName ||
		len(info.Users) != 1 || info.Users[0].Name != qgatest.UserName || len(info.Filesystems) != 1 || info.Filesystems[0].Mountpoint != "/" {
		t.Errorf("GuestInfo = %+v", info)
	}
	info, err = m.GuestInfo(ctx, name, GuestInfoKinds{Hostname: true}, 0)
	if err != nil || info.Hostname != qgatest.HostName || info.OS != nil || info.Users != nil || info.Filesystems != nil {
		t.Errorf("GuestInfo of the host name only = %+v, %v", info, err)
	}

	ifaces, err := m.AgentAddresses(ctx, name, 0)
	if err != nil || len(ifaces) != 2 || ifaces[1].Name != "eth0" || ifaces[1].MAC != qgatest.MAC ||
		ifaces[1].Addresses[0] != (GuestIPAddress{Type: "ipv4", Address: qgatest.Address, Prefix: 24}) {
		t.Errorf("AgentAddresses = %+v, %v", ifaces, err)
	}

	reply, err := m.AgentCommand(ctx, name, []byte(`{"execute":"guest-info"}`), 0)
	if err != nil || !strings.HasPrefix(string(reply), `{"return": {"version"`) {
		t.Errorf("AgentCommand(guest-info) = %s, %v", reply, err)
	}
	_, err = m.AgentCommand(ctx, name, []byte(`{"execute":"guest-frob"}`), 0)
	if err == nil || err.Error() != "domain fake: the guest agent could not run guest-frob: The command guest-frob has not been found (CommandNotFound)" {
		t.Errorf("AgentCommand(guest-frob): %v", err)
	}
	if _, err := m.AgentCommand(ctx, name, []byte(`guest-info`), 0); err == nil || !strings.Contains(err.Error(), "not a guest agent command") {
		t.Errorf("AgentCommand(not JSON): %v", err)
	}

	if err := m.AgentReboot(ctx, name); err != nil {
		t.Fatalf("AgentReboot: %v", err)
	}
	if st, err := m.Status(ctx, name); err != nil || st.State != StateRunning {
		t.Fatalf("after AgentReboot: %s (%s), %v", st.State, st.Reason, err)
	}

	if err := m.AgentShutdown(ctx, name, 20*time.Second); err != nil {
		t.Fatalf("AgentShutdown: %v", err)
	}
	st, err := m.Status(ctx, name)
	if err != nil || st.State != StateShutoff || st.Reason != "shutdown" {
		t.Errorf("after AgentShutdown: %s (%s), %v; want shut off (shutdown)", st.State, st.Reason, err)
	}
	if _, err := m.AgentCommand(ctx, name, []byte(`{"execute":"guest-ping"}`), 0); !errors.As(err, new(*NotRunningError)) {
		t.Errorf("AgentCommand to a shut off domain: %v", err)
	}
}

// A guest without qemu-guest-agent: the channel is there (the fake QEMU of
// mode "normal" holds its listener and never accepts), nothing answers.
// Every agent verb fails in one clear line within its timeout, and the
// domain runs on.
func TestAgentDoesNotAnswer(t *testing.T) {
	m, name := fakeDomain(t, "normal", AgentChannelXML)
	ctx := deadline(t, 60*time.Second)
	const want = "domain fake: the guest agent did not answer within 1s: is qemu-guest-agent running in the guest?"
	for verb, call := range map[string]func() error{
		"AgentCommand": func() error {
			_, err := m.AgentCommand(ctx, name, []byte(`{"execute":"guest-ping"}`), time.Second)
			return err
		},
		"GuestInfo": func() error { _, err := m.GuestInfo(ctx, name, GuestInfoKinds{}, time.Second); return err },
		"AgentShutdown": func() error {
			return m.AgentShutdown(ctx, name, time.Second)
		},
	} {
		began := time.Now()
		err := call()
		if took := time.Since(began); took > 30*time.Second { // a hang guard, not a speed claim
			t.Errorf("%s took %v", verb, took)
		}
		if !errors.Is(err, ErrNoAnswer) || err.Error() != want {
			t.Errorf("%s: %v; want %q", verb, err, want)
		}
	}
	if st, err := m.Status(ctx, name); err != nil || st.State != StateRunning {
		t.Fatalf("after the agent verbs: %s (%s), %v", st.State, st.Reason, err)
	}

	if err := m.Suspend(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AgentAddresses(ctx, name, time.Second); !errors.Is(err, ErrPaused) || !strings.Contains(err.Error(), "minivirt resume fake") {
		t.Errorf("AgentAddresses while paused: %v", err)
	}
	if err := m.Resume(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := m.Shutdown(ctx, name, 20*time.Second); err != nil {
		t.Fatal(err)
	}
}

// A domain without the agent's channel is refused at once, in one line
// that says what to do; once its definition has one, the line says it
// takes effect at the next start.
func TestAgentWithoutChannel(t *testing.T) {
	m, name := fakeDomain(t, "normal")
	ctx := deadline(t, 60*time.Second)
	err := m.AgentShutdown(ctx, name, 20*time.Second)
	want := "domain fake has no guest agent channel (org.qemu.guest_agent.0); add one (" + AgentChannelXML + ") and restart it, or use the ACPI mode (--mode acpi)"
	if !errors.Is(err, ErrNoAgentChannel) || err.Error() != want {
		t.Errorf("AgentShutdown without the channel: %v", err)
	}
	if _, err := m.AgentAddresses(ctx, name, 0); !errors.Is(err, ErrNoAgentChannel) || !strings.HasSuffix(err.Error(), "or use the DHCP lease (--source lease)") {
		t.Errorf("AgentAddresses without the channel: %v", err)
	}
	withChannel, err := domain.Parse(strings.NewReader(`<domain type='qemu'><name>x</name><memory>1024</memory><os><kernel>/k</kernel></os><devices>` + AgentChannelXML + `</devices></domain>`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Change(name, func(d *domain.Domain) error {
		d.Devices.Channels = append(d.Devices.Channels, withChannel.Devices.Channels...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err = m.AgentCommand(ctx, name, []byte(`{"execute":"guest-ping"}`), 0)
	if !errors.Is(err, ErrNoAgentChannel) || !strings.Contains(err.Error(), "was started without a guest agent channel") || !strings.Contains(err.Error(), "next start") {
		t.Errorf("AgentCommand with the channel defined since the start: %v", err)
	}
	if err := m.Shutdown(ctx, name, 20*time.Second); err != nil {
		t.Fatal(err)
	}
}
