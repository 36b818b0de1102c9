package main

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/minivirt/minivirt/internal/fakeqemu"
	"github.com/minivirt/minivirt/pkg/manager"
	"github.com/minivirt/minivirt/pkg/qga/qgatest"
)

// The guest agent verbs check their flags and arguments before they look
// for the domain's agent, and keep the old verbs' behaviour without them.
func TestAgentVerbFlags(t *testing.T) {
	e := newEnv(t)
	e.OK(domainXML("off", ""), "define", "-")
	tests := []struct {
		args []string
		want string // what the one stderr line holds
	}{
		{[]string{"shutdown", "off", "--mode", "initctl"}, `--mode "initctl": give acpi (the ACPI power button, the default) or agent`},
		{[]string{"reboot", "off", "--mode", "acpi,agent"}, `--mode "acpi,agent": give acpi`},
		{[]string{"domifaddr", "off", "--source", "arp"}, `--source "arp": give lease`},
		{[]string{"qemu-agent-command", "off"}, "qemu-agent-command: give JSON"},
		{[]string{"qemu-agent-command", "off", "guest-info"}, `"guest-info" is not a guest agent command; give e.g. '{"execute":"guest-info"}'`},
		{[]string{"qemu-agent-command", "off", `{"execute":"guest-info"}`, "--timeout", "0"}, "flag --timeout 0: must be a whole number of seconds, 1 or more"},
		{[]string{"qemu-agent-command", "off", `{"execute":"guest-info"}`, "--timeout", "soon"}, `flag --timeout "soon": must be a whole number`},
		{[]string{"guestinfo", "off", "-o", "yaml"}, `output format "yaml"`},
		{[]string{"guestinfo", "nope"}, `domain "nope" not found`},
		// Not running: refused before anything is sent.
		{[]string{"qemu-agent-command", "off", `{"execute":`, `"guest-info"}`}, "domain off is not running"},
		{[]string{"guestinfo", "off", "--os"}, "domain off is not running"},
		{[]string{"domifaddr", "off", "--source", "agent"}, "domain off is not running"},
		{[]string{"domifaddr", "off"}, "domain off is not running"},
		{[]string{"shutdown", "off", "--mode", "agent"}, "domain off is not running"},
		{[]string{"shutdown", "off"}, "domain off is not running"},
		{[]string{"reboot", "off", "--mode", "agent"}, "domain off is not running"},
		{[]string{"reboot", "off"}, "domain off is not running"},
	}
	for _, tt := range tests {
		out, errs, code := e.Run("", tt.args...)
		if code != 1 || out != "" || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "minivirt: ") || !strings.Contains(errs, tt.want) {
			t.Errorf("minivirt %s: exit %d, stdout %q, stderr %q; want exit 1 and one line holding %q", strings.Join(tt.args, " "), code, out, errs, tt.want)
		}
	}
}

// fakeDomainXML is a domain whose emulator is the fake QEMU of mode, with
// extra devices.
func fakeDomainXML(t *testing.T, name, mode, devices string) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>` + name + `</name><memory unit='MiB'>64</memory>
<os><kernel>` + self + `</kernel></os><devices><emulator>` + self + `</emulator>` + devices + `</devices>
<qemu:commandline><qemu:env name='` + fakeqemu.Env + `' value='` + mode + `'/></qemu:commandline></domain>`
}

// virshDomifaddr is what virsh domifaddr --source agent prints for the fake
// guest, byte for byte.
const virshDomifaddr = ` Name       MAC address          Protocol     Address
-------------------------------------------------------------------------------
 lo         00:00:00:00:00:00    ipv4         127.0.0.1/8
 -          -                    ipv6         ::1/128
 eth0       ` + qgatest.MAC + `    ipv4         ` + qgatest.Address + `/24
 -          -                    ipv6         fe80::5054:ff:fe12:3456/64
`

// An interface without addresses is one row of N/A, as virsh prints it.
func TestVirshAddressesWithoutAddress(t *testing.T) {
	var out strings.Builder
	a := &app{stdout: &out}
	a.printVirshAddresses([]addressRow{{Name: "eth1", Source: "agent"}, {Name: "eth2", MAC: qgatest.MAC, Source: "agent"}})
	want := " eth1       N/A                  N/A          N/A\n eth2       " + qgatest.MAC + "    N/A          N/A\n"
	if got := out.String(); !strings.HasSuffix(got, want) {
		t.Errorf("printed:\n%s\nwant it to end:\n%s", got, want)
	}
}

// Every agent verb against the fake QEMU's guest agent, through the real
// binary: what it prints, as virsh does.
func TestAgentVerbs(t *testing.T) {
	e := newEnv(t)
	e.OK(fakeDomainXML(t, "fake", "agent", manager.AgentChannelXML), "define", "-")
	e.OK("", "start", "fake")
	t.Cleanup(func() { e.Run("", "destroy", "fake") })

	checks := []struct {
		args []string
		want string // a regular expression stdout must match
	}{
		{[]string{"guestinfo", "fake"}, `(?s)^user\.count +: 1\nuser\.0\.name +: ` + qgatest.UserName + `\nuser\.0\.login-time +: 1700000000250\n` +
			`os\.id +: debian\n.*os\.pretty-name +: ` + regexp.QuoteMeta(qgatest.PrettyName) + `\n.*os\.machine +: x86_64\n` +
			`hostname +: ` + qgatest.HostName + `\nfs\.count +: 1\nfs\.0\.name +: vda1\nfs\.0\.mountpoint +: /\nfs\.0\.fstype +: ext4\n` +
			`fs\.0\.total-bytes +: 2040373248\nfs\.0\.used-bytes +: 981962752\nfs\.0\.disk\.count +: 1\n` +
			`fs\.0\.disk\.0\.serial +: minivirt-disk\nfs\.0\.disk\.0\.device +: /dev/vda1\n$`},
		{[]string{"guestinfo", "fake", "--hostname"}, `^hostname            : ` + qgatest.HostName + `\n$`},
		{[]string{"guestinfo", "fake", "-o", "json"}, `(?s)"users": \[\n.*"hostname": "` + qgatest.HostName + `"`},
		{[]string{"domifaddr", "fake", "--source", "agent"}, "^" + regexp.QuoteMeta(virshDomifaddr) + "$"},
		{[]string{"domifaddr", "fake", "--source", "agent", "-o", "json"}, `"name": "eth0",\s+"mac": "` + qgatest.MAC + `",\s+"protocol": "ipv4",\s+"address": "` + qgatest.Address + `/24",\s+"source": "agent"`},
		{[]string{"qemu-agent-command", "fake", `{"execute":"guest-get-host-name"}`}, `^\{"return": \{"host-name": "` + qgatest.HostName + `"\}\}\n$`},
		{[]string{"qemu-agent-command", "fake", "--pretty", `{"execute":"guest-get-host-name"}`}, `^\{\n  "return": \{\n    "host-name": "` + qgatest.HostName + `"\n  \}\n\}\n$`},
		{[]string{"reboot", "fake", "--mode", "agent"}, `^Domain fake is being rebooted\n$`},
		{[]string{"domstate", "fake"}, `^running\n`},
		{[]string{"shutdown", "fake", "--mode", "agent"}, `^Domain fake shut off\n$`},
		{[]string{"domstate", "fake", "--reason"}, `^shut off \(shutdown\)\n`},
	}
	for _, c := range checks {
		out, errs, code := e.Run("", c.args...)
		if code != 0 || errs != "" || !regexp.MustCompile(c.want).MatchString(out) {
			t.Errorf("minivirt %s: exit %d, stderr %q, stdout:\n%s\nwant it to match %s", strings.Join(c.args, " "), code, errs, out, c.want)
		}
	}
}

// A guest without an agent, or a domain without the channel: one line, in
// the --timeout given.
func TestAgentVerbFailures(t *testing.T) {
	e := newEnv(t)
	e.OK(fakeDomainXML(t, "silent", "normal", manager.AgentChannelXML), "define", "-")
	e.OK(fakeDomainXML(t, "bare", "normal", ""), "define", "-")
	for _, name := range []string{"silent", "bare"} {
		e.OK("", "start", name)
		t.Cleanup(func() { e.Run("", "destroy", name) })
	}
	checks := []struct {
		args []string
		want string // the one stderr line
	}{
		{[]string{"qemu-agent-command", "silent", "--timeout", "1", `{"execute":"guest-ping"}`},
			"minivirt: domain silent: the guest agent did not answer within 1s: is qemu-guest-agent running in the guest?\n"},
		{[]string{"shutdown", "bare", "--mode", "agent"},
			"minivirt: domain bare has no guest agent channel (org.qemu.guest_agent.0); add one (" + manager.AgentChannelXML + ") and restart it, or use the ACPI mode (--mode acpi)\n"},
	}
	for _, c := range checks {
		out, errs, code := e.Run("", c.args...)
		if code != 1 || out != "" || errs != c.want {
			t.Errorf("minivirt %s: exit %d, stdout %q, stderr %q; want %q", strings.Join(c.args, " "), code, out, errs, c.want)
		}
	}
	// Without --mode, shutdown is the ACPI power button, as before.
	if out := e.OK("", "shutdown", "bare"); out != "Domain bare shut off\n" {
		t.Errorf("shutdown without --mode: %q", out)
	}
}
