package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/manager"
)

// agentHelp is what every guest agent verb's --help says of the agent.
const agentHelp = `The guest agent is qemu-guest-agent, running in the guest, on the virtio-serial
port ` + domain.AgentChannel + ` (` + "`minivirt create`" + ` adds it; any domain with
` + manager.AgentChannelXML + `
has it). A guest without the agent running is an error once the agent does not answer
in time, never a hang.`

func (a *app) agentCommandCommand() *cobra.Command {
	var seconds int
	var pretty bool
	cmd := &cobra.Command{
		Use:   "qemu-agent-command NAME JSON [--timeout SECONDS] [--pretty]",
		Short: "Send a raw command to the guest agent and print its reply, as virsh qemu-agent-command",
		Long: `qemu-agent-command sends one command to the guest agent and prints its reply,
{"return": ...}. An error reply is an error. The commands qemu-ga answers only when
they fail (guest-shutdown, guest-suspend-*) print nothing once no refusal came.
Words after NAME are joined with spaces into the command, as virsh does.

` + agentHelp,
		Example: `  minivirt qemu-agent-command demo '{"execute":"guest-info"}'
  minivirt qemu-agent-command demo --pretty '{"execute":"guest-get-osinfo"}'
  minivirt qemu-agent-command demo --timeout 60 '{"execute":"guest-fsfreeze-freeze"}'`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return exactArgs("NAME", "JSON")(cmd, args)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			timeout, err := agentTimeout(cmd, seconds)
			if err != nil {
				return err
			}
			command := []byte(strings.Join(args[1:], " "))
			if err := manager.CheckAgentCommand(command); err != nil {
				return fmt.Errorf("qemu-agent-command: %w", err)
			}
			reply, err := a.mgr.AgentCommand(cmd.Context(), args[0], command, timeout)
			if err != nil || reply == nil {
				return userError(err)
			}
			if pretty {
				var b bytes.Buffer
				if json.Indent(&b, reply, "", "  ") == nil {
					reply = b.Bytes()
				}
			}
			_, err = fmt.Fprintf(a.stdout, "%s\n", reply)
			return err
		},
	}
	cmd.Flags().IntVar(&seconds, "timeout", 0, fmt.Sprintf("seconds to wait for the agent's answer (default %d)", int(manager.DefaultAgentTimeout/time.Second)))
	cmd.Flags().BoolVar(&pretty, "pretty", false, "indent the reply")
	return a.domainCommand(cmd)
}

// agentTimeout is the --timeout SECONDS of an agent verb: 0 when it is not
// given (the engine's default).
func agentTimeout(cmd *cobra.Command, seconds int) (time.Duration, error) {
	if cmd.Flags().Changed("timeout") && seconds < 1 {
		return 0, fmt.Errorf("flag --timeout %d: must be a whole number of seconds, 1 or more", seconds)
	}
	return time.Duration(seconds) * time.Second, nil
}

func (a *app) guestinfoCommand() *cobra.Command {
	var kinds manager.GuestInfoKinds
	var output string
	cmd := &cobra.Command{
		Use:   "guestinfo NAME [--user] [--os] [--hostname] [--filesystem] [-o json]",
		Short: "Show what the guest agent says of the guest, as virsh guestinfo",
		Long: `guestinfo asks the guest agent for the logged-in users, the operating system, the
host name and the mounted filesystems, and prints them as virsh guestinfo does, one
"key: value" line each. Without a kind flag it shows every kind the agent has; a kind
asked for by its flag that the agent lacks is an error.

` + agentHelp,
		Example: "  minivirt guestinfo demo\n  minivirt guestinfo demo --os --hostname\n  minivirt guestinfo demo -o json",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			info, err := a.mgr.GuestInfo(cmd.Context(), args[0], kinds, 0)
			if err != nil {
				return userError(err)
			}
			if output == "json" {
				return a.printJSON(info)
			}
			for _, f := range guestinfoFields(info) {
				fmt.Fprintf(a.stdout, "%-20s: %s\n", f[0], f[1])
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&kinds.Users, "user", false, "the logged-in users")
	f.BoolVar(&kinds.OS, "os", false, "the operating system")
	f.BoolVar(&kinds.Hostname, "hostname", false, "the host name")
	f.BoolVar(&kinds.Filesystems, "filesystem", false, "the mounted filesystems")
	f.StringVarP(&output, "output", "o", "", "output format: table or json")
	return a.domainCommand(cmd)
}

// guestinfoFields are virsh guestinfo's keys and values, in its order:
// users, operating system, host name, filesystems. Login times are in
// milliseconds since the epoch, as libvirt gives them.
func guestinfoFields(info manager.GuestInfo) [][2]string {
	var out [][2]string
	add := func(key, value string) {
		if value != "" {
			out = append(out, [2]string{key, value})
		}
	}
	if info.Users != nil {
		add("user.count", fmt.Sprint(len(info.Users)))
	}
	for i, u := range info.Users {
		add(fmt.Sprintf("user.%d.name", i), u.Name)
		add(fmt.Sprintf("user.%d.domain", i), u.Domain)
		add(fmt.Sprintf("user.%d.login-time", i), fmt.Sprint(uint64(u.LoginTime*1000)))
	}
	if os := info.OS; os != nil {
		for _, f := range [][2]string{{"id", os.ID}, {"name", os.Name}, {"pretty-name", os.PrettyName}, {"version", os.Version},
			{"version-id", os.VersionID}, {"kernel-release", os.KernelRelease}, {"kernel-version", os.KernelVersion},
			{"machine", os.Machine}, {"variant", os.Variant}, {"variant-id", os.VariantID}} {
			add("os."+f[0], f[1])
		}
	}
	add("hostname", info.Hostname)
	if info.Filesystems != nil {
		add("fs.count", fmt.Sprint(len(info.Filesystems)))
	}
	for i, fs := range info.Filesystems {
		key := fmt.Sprintf("fs.%d.", i)
		add(key+"name", fs.Name)
		add(key+"mountpoint", fs.Mountpoint)
		add(key+"fstype", fs.Type)
		if fs.TotalBytes != nil {
			add(key+"total-bytes", fmt.Sprint(*fs.TotalBytes))
		}
		if fs.UsedBytes != nil {
			add(key+"used-bytes", fmt.Sprint(*fs.UsedBytes))
		}
		add(key+"disk.count", fmt.Sprint(len(fs.Disks)))
		for j, d := range fs.Disks {
			add(fmt.Sprintf("%sdisk.%d.serial", key, j), d.Serial)
			add(fmt.Sprintf("%sdisk.%d.device", key, j), d.Dev)
		}
	}
	return out
}

// The ways shutdown and reboot reach the guest, as virsh's --mode.
const (
	modeACPI  = "acpi"
	modeAgent = "agent"
)

// byMode runs acpi or agent, as the --mode mode says, with the engine's
// error worded for the command line.
func byMode(mode string, acpi, agent func() error) error {
	switch mode {
	case modeACPI:
		return userError(acpi())
	case modeAgent:
		return userError(agent())
	}
	return fmt.Errorf("--mode %q: give acpi (the ACPI power button, the default) or agent (the guest agent's guest-shutdown)", mode)
}
