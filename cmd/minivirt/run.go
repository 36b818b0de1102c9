package main

import (
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/manager"
)

// Exit statuses of `minivirt run`: how the guest ended.
var runExit = map[manager.Outcome]int{
	manager.PoweredOff:  0,   // the guest powered itself off
	manager.Failed:      1,   // the guest could not be started
	manager.Crashed:     2,   // the guest panicked or QEMU died
	manager.TimedOut:    124, // --timeout passed; the guest was destroyed
	manager.Interrupted: 130, // SIGINT or SIGTERM; the guest was destroyed
}

func (a *app) runCommand() *cobra.Command {
	var rm, console bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "run FILE|-",
		Short: "Define and start a domain, wait for it to power off, and exit with how it ended",
		Long: `run defines and starts a domain, optionally streams its serial console, and
waits for the guest to power off. It exits 0 after a clean power-off, 1 when the
guest could not start, 2 when it crashed, 124 after --timeout and 130 when
interrupted; after a timeout or an interrupt the guest is destroyed.

With --rm the run is transient: its definition and logs are removed at the end,
and a domain that already has the name is never touched: the run then takes the
name plus a random suffix (and a uuid of its own), and says so on stderr.`,
		Args: exactArgs("FILE|-"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := readDomain(args[0], a.stdin)
			if err != nil {
				return err
			}
			asked := d.Name
			for _, w := range d.Warnings() {
				a.warn("domain %s: %s", d.Name, w)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			opt := manager.RunOptions{Transient: rm, Timeout: timeout}
			if console {
				opt.Console = a.stdout
			}
			res, err := a.mgr.Run(ctx, d, opt)
			if res.Name != "" && res.Name != asked {
				a.warn("domain %s exists; this transient run is named %s", asked, res.Name)
			}
			for _, w := range res.Warnings {
				a.warn("%s", w)
			}
			if err != nil {
				return &exitError{code: runExit[res.Outcome], err: userError(err)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&rm, "rm", false, "transient: remove the definition and its logs when the run ends (never touches an existing domain)")
	f.BoolVar(&console, "console", false, "stream the serial console to standard output")
	f.DurationVar(&timeout, "timeout", 0, "destroy the guest if it has not powered off after this long (0: no limit)")
	return cmd
}
