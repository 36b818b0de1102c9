package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/manager"
)

const (
	defaultStopTimeout = 60 * time.Second
	supervisorCommand  = "__supervise"
)

func (a *app) startCommand() *cobra.Command {
	var marked, paused bool
	cmd := &cobra.Command{
		Use:   "start NAME | --autostart",
		Short: "Start a domain; returns once its CPUs run under supervision",
		Long: `start starts a domain and returns once its CPUs run under supervision.
With --paused its CPUs wait, stopped, until ` + "`minivirt resume`" + `: the domain is
paused (user), as virsh start --paused leaves it.
With --autostart it starts every domain marked with ` + "`minivirt autostart`" + ` that is
not running, and reports each: the host's boot unit runs it once.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if marked {
				if paused {
					return errors.New("--paused and --autostart: give one; autostart runs each marked domain")
				}
				return exactArgs()(cmd, args)
			}
			return exactArgs("NAME")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if marked {
				return a.startMarked(cmd.Context())
			}
			name := args[0]
			warnings, err := a.mgr.Start(cmd.Context(), name, manager.StartOptions{Paused: paused})
			for _, w := range warnings {
				a.warn("%s", w)
			}
			if err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s started\n", name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&marked, "autostart", false, "start every domain marked for autostart")
	cmd.Flags().BoolVar(&paused, "paused", false, "leave the guest's CPUs stopped until `minivirt resume`")
	return cmd
}

// superviseCommand is the hidden command a detached supervisor runs; its
// ready pipe is fd 3.
func (a *app) superviseCommand() *cobra.Command {
	var paused, restoreDefinition bool
	var restore string
	cmd := &cobra.Command{
		Use:    supervisorCommand + " NAME",
		Hidden: true,
		Args:   exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			ready := os.NewFile(3, "ready")
			syscall.CloseOnExec(3)
			logger := log.New(a.stderr, "supervisor "+name+": ", log.LstdFlags|log.Lmicroseconds)
			self, err := os.Executable()
			if err != nil {
				manager.ReportReady(ready, logger)(nil, err)
				return err
			}
			return a.mgr.Supervise(context.Background(), name, manager.SuperviseOptions{
				Self:              self,
				Ready:             manager.ReportReady(ready, logger),
				Log:               a.stderr,
				Paused:            paused,
				Restore:           restore,
				RestoreDefinition: restoreDefinition,
			})
		},
	}
	cmd.Flags().BoolVar(&paused, "paused", false, "leave the guest's CPUs stopped")
	cmd.Flags().StringVar(&restore, "restore", "", "go on from this saved file instead of booting")
	cmd.Flags().BoolVar(&restoreDefinition, "restore-definition", false, "with --restore: run the domain as defined, not as saved")
	return cmd
}

func (a *app) shutdownCommand() *cobra.Command {
	var timeout time.Duration
	var mode string
	cmd := &cobra.Command{
		Use:   "shutdown NAME [--mode acpi|agent] [--timeout 60s]",
		Short: "Press the ACPI power button (or ask the guest agent) and wait until the domain is shut off",
		Long: `shutdown asks the guest to power off and waits until the domain is shut off, at
most --timeout. With --mode acpi (the default) it presses the ACPI power button; with
--mode agent it asks the guest agent (guest-shutdown), which needs qemu-guest-agent
running in the guest and the domain's ` + domain.AgentChannel + ` channel.`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, name := cmd.Context(), args[0]
			err := byMode(mode, func() error { return a.mgr.Shutdown(ctx, name, timeout) }, func() error { return a.mgr.AgentShutdown(ctx, name, timeout) })
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Domain %s shut off\n", name)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", defaultStopTimeout, "how long to wait for the guest to power off")
	cmd.Flags().StringVar(&mode, "mode", modeACPI, "how to ask the guest: acpi or agent")
	return cmd
}

func (a *app) rebootCommand() *cobra.Command {
	var mode string
	cmd := &cobra.Command{
		Use:   "reboot NAME [--mode acpi|agent]",
		Short: "Reboot a domain through the ACPI power button (or the guest agent)",
		Long: `reboot asks the guest to restart and returns once it is asked: it does not wait
for the guest. With --mode acpi (the default) it presses the ACPI power button and
the domain then resets instead of powering off; with --mode agent it asks the guest
agent (guest-shutdown with mode reboot), which needs qemu-guest-agent running in the
guest and the domain's ` + domain.AgentChannel + ` channel.`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, name := cmd.Context(), args[0]
			if err := byMode(mode, func() error { return a.mgr.Reboot(ctx, name) }, func() error { return a.mgr.AgentReboot(ctx, name) }); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Domain %s is being rebooted\n", name)
			return nil
		},
	}
	cmd.Flags().StringVar(&mode, "mode", modeACPI, "how to ask the guest: acpi or agent")
	return cmd
}

func (a *app) destroyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "destroy NAME",
		Short: "Stop a domain at once, as pulling the plug",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			note, err := a.mgr.Destroy(cmd.Context(), name)
			if err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s destroyed%s\n", name, note)
			return nil
		},
	}
}

func (a *app) stopCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Shut a domain down, and destroy it if the guest ignores the power button",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			destroyed, note, err := a.mgr.Stop(cmd.Context(), name, timeout)
			if err != nil {
				return userError(err)
			}
			if destroyed {
				fmt.Fprintf(a.stdout, "Domain %s destroyed%s\n", name, note)
			} else {
				fmt.Fprintf(a.stdout, "Domain %s shut off\n", name)
			}
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", defaultStopTimeout, "how long to wait for the guest to power off before destroying it")
	return cmd
}

// simpleCommand is a verb that is one call of the engine, verb (such as
// (*manager.Manager).Reboot), and prints "Domain NAME done".
func (a *app) simpleCommand(use, short string, verb func(*manager.Manager, context.Context, string) error, done string) *cobra.Command {
	return &cobra.Command{
		Use:   use + " NAME",
		Short: short,
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := verb(a.mgr, cmd.Context(), name); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s %s\n", name, done)
			return nil
		},
	}
}

func (a *app) qmpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "qmp NAME JSON",
		Short: "Send a raw QMP command through the supervisor and print QEMU's reply",
		Args:  exactArgs("NAME", "JSON"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, raw := args[0], []byte(args[1])
			var probe struct {
				Execute string `json:"execute"`
			}
			if err := json.Unmarshal(raw, &probe); err != nil || probe.Execute == "" {
				return fmt.Errorf(`qmp: %q is not a QMP command; give e.g. '{"execute":"query-status"}'`, args[1])
			}
			out, err := a.mgr.QMP(cmd.Context(), name, raw)
			if err != nil {
				return userError(err)
			}
			_, err = fmt.Fprintf(a.stdout, "%s\n", out)
			return err
		},
	}
}

// statusReport is `status -o json`.
type statusReport struct {
	Name    string `json:"name"`
	UUID    string `json:"uuid"`
	State   string `json:"state"`
	Reason  string `json:"reason,omitempty"`
	Detail  string `json:"detail,omitempty"`
	Accel   string `json:"accel,omitempty"`
	Network string `json:"network,omitempty"`
	// NetBackend and NetFallback: how QEMU's NIC reaches netstack, and
	// why it is the stream backend when vhost-user could not be used.
	NetBackend  string `json:"net_backend,omitempty"`
	NetFallback string `json:"net_fallback,omitempty"`
	QEMUPID     int    `json:"qemu_pid"`
	// QEMUUID is the user QEMU runs as (its effective uid; -1 when it is
	// not running), and Confined the directory it is confined to, if any.
	QEMUUID       int    `json:"qemu_uid"`
	Confined      string `json:"confined,omitempty"`
	SupervisorPID int    `json:"supervisor_pid"`
	Supervised    bool   `json:"supervised"`
	Monitor       string `json:"monitor,omitempty"` // "connected" or "lost" while QEMU runs
	// Tainted says QEMU gets options minivirt did not write
	// (<qemu:commandline>), as libvirt's "tainted: custom-argv".
	Tainted bool `json:"tainted,omitempty"`
	// Kept names the tuning the definition holds that minivirt keeps but
	// does not apply; RefusedAtStart what keeps it from starting here.
	Kept           []string            `json:"kept,omitempty"`
	RefusedAtStart []string            `json:"refused_at_start,omitempty"`
	Since          *time.Time          `json:"since,omitempty"`
	VMChannels     []vmchannelItem     `json:"vmchannels"`
	Forwards       []forwardItem       `json:"forwards"`
	VirtioPorts    []domain.VirtioPort `json:"virtio_ports,omitempty"`
	// Stale says why the stored record is behind what happened (the
	// state database could not be written); State is what happened.
	Stale string `json:"stale,omitempty"`
	// Unrecorded are QEMU processes of the domain that no record names
	// (a supervisor killed while starting them); destroy ends them.
	Unrecorded []int `json:"unrecorded_qemu_pids,omitempty"`
}

func (a *app) statusCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status NAME",
		Short: "Show a domain's state, processes and accelerator",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			st, err := a.mgr.Status(cmd.Context(), args[0])
			if err != nil {
				return userError(err)
			}
			d, o := st.Domain, st.Observed
			r := statusReport{Name: d.Name, UUID: d.UUID, State: o.State, Reason: o.Reason, Detail: o.Detail, QEMUUID: st.QEMUUID,
				Confined: st.Confined, Tainted: d.Tainted(), VMChannels: vmchannelItems(d, st.Live), Forwards: forwardItems(st),
				Kept: d.KeptElements(), RefusedAtStart: d.RefusedAtStart()}
			if st.Live != nil {
				r.VirtioPorts = st.Live.VirtioPorts
			}
			r.Stale = o.Stale
			for _, id := range o.Strays {
				r.Unrecorded = append(r.Unrecorded, id.PID)
			}
			if !o.Since.IsZero() {
				r.Since = &o.Since
			}
			if o.Active() {
				r.Accel, r.Network, r.Supervised = o.Accel, o.Network, o.Supervised
				r.NetBackend, r.NetFallback = o.NetBackend, o.NetFallback
				if o.QEMUAlive {
					r.QEMUPID = o.QEMU.PID
				}
				if o.Supervised {
					r.SupervisorPID = o.Supervisor.PID
				}
				switch {
				case st.Live != nil && st.Live.MonitorLost:
					r.Monitor = "lost"
				case st.Live != nil:
					r.Monitor = "connected"
				}
			}
			if output == "json" {
				return a.printJSON(r)
			}
			w := a.stdout
			fmt.Fprintf(w, "Name:        %s\nUUID:        %s\n", r.Name, r.UUID)
			state := r.State
			if r.Reason != "" {
				state += " (" + r.Reason + ")"
			}
			fmt.Fprintf(w, "State:       %s\n", state)
			if r.Detail != "" {
				fmt.Fprintf(w, "Detail:      %s\n", r.Detail)
			}
			if r.Tainted {
				fmt.Fprintf(w, "Tainted:     custom-argv (<qemu:commandline> passes QEMU options minivirt did not write)\n")
			}
			if len(r.Kept) > 0 {
				fmt.Fprintf(w, "Kept:        %s (kept, not applied: they change nothing the guest sees)\n", strings.Join(r.Kept, ", "))
			}
			for _, why := range r.RefusedAtStart {
				fmt.Fprintf(w, "Cannot start: %s\n", why)
			}
			if r.Stale != "" {
				fmt.Fprintf(w, "Record:      stale: %s\n", r.Stale)
			}
			for _, pid := range r.Unrecorded {
				fmt.Fprintf(w, "Unrecorded:  QEMU pid %d (no record names it; `minivirt destroy %s` ends it)\n", pid, r.Name)
			}
			if o.Active() {
				network := r.Network
				switch {
				case network == "":
					network = "none"
				case r.NetFallback != "":
					network += ", " + r.NetBackend + " (not vhost-user: " + r.NetFallback + ")"
				case r.NetBackend != "":
					network += ", " + r.NetBackend
				}
				fmt.Fprintf(w, "Accel:       %s\nNetwork:     %s\nQEMU pid:    %d\n", r.Accel, network, r.QEMUPID)
				if r.QEMUUID >= 0 {
					confined := "not confined"
					if r.Confined != "" {
						confined = "confined to " + r.Confined
					}
					fmt.Fprintf(w, "QEMU user:   uid %d, %s\n", r.QEMUUID, confined)
				}
				switch {
				case !r.Supervised:
					fmt.Fprintf(w, "Supervisor:  gone (unsupervised; `minivirt destroy %s` still works)\n", r.Name)
				case st.LiveError != nil:
					fmt.Fprintf(w, "Supervisor:  pid %d, not answering (%v)\n", r.SupervisorPID, st.LiveError)
				default:
					fmt.Fprintf(w, "Supervisor:  pid %d\n", r.SupervisorPID)
				}
				for _, p := range r.VirtioPorts {
					fmt.Fprintf(w, "Channel:     %s on %s\n", p.Name, p.Path)
				}
				if r.Monitor == "lost" {
					fmt.Fprintf(w, "Monitor:     lost (the supervisor is reconnecting; shutdown cannot press the power button meanwhile)\n")
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: table or json")
	return cmd
}

func (a *app) logCommand() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "log NAME",
		Short: "Print a domain's serial console log; -f follows it while the domain runs",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			_, o, err := a.mgr.Observe(name)
			if err != nil {
				return userError(err)
			}
			if follow {
				a.mgr.FollowConsole(cmd.Context(), name, 0, o, a.stdout)
				return nil
			}
			f, err := os.Open(a.mgr.ConsoleLog(name))
			if errors.Is(err, os.ErrNotExist) {
				return nil // never started: no console output yet
			}
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.Copy(a.stdout, f)
			return err
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new console output until the domain stops")
	return cmd
}
