// Command minivirt is a small, daemonless manager for QEMU/KVM virtual
// machines with libvirt's everyday verbs and domain XML, and vmchannels: guest
// TCP connections relayed one for one to host Unix sockets.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/launcher"
)

func main() {
	// The vmchannel helper runs before anything that could print.
	if len(os.Args) > 1 && os.Args[1] == launcher.HelperCommand {
		os.Exit(vmchannelHelper(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// exitError carries an exit status other than 1, with or without a message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// run executes one command line and returns the exit status. Every failure
// is one line on stderr that starts "minivirt: ".
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.Execute()
	if err == nil {
		return 0
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintf(stderr, "minivirt: %s\n", oneLine(msg))
	}
	return code
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "minivirt",
		Short: "A small, daemonless manager for QEMU/KVM virtual machines",
		Long: `minivirt manages QEMU/KVM virtual machines with libvirt's verbs and domain XML.

Its vmchannel relays every guest TCP connection to 10.0.2.4:PORT (or another
address of the user network) to its own connection on a host Unix socket,
with end-of-stream carried both ways.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })
	f := root.PersistentFlags()
	f.StringVar(&a.stateDir, "state-dir", "", "state directory (definitions, logs); default $MINIVIRT_STATE_DIR, /var/lib/minivirt for root, else $XDG_DATA_HOME/minivirt")
	f.StringVar(&a.runDir, "run-dir", "", "runtime directory (sockets, pids); default $MINIVIRT_RUN_DIR, /run/minivirt for root, else $XDG_RUNTIME_DIR/minivirt")
	f.DurationVar(&a.lockTimeout, "lock-timeout", defaultLockTimeout, "how long to wait for another minivirt that holds the state database")
	root.PersistentPreRunE = func(*cobra.Command, []string) error { return a.resolveDirs() }

	root.AddCommand(
		a.defineCommand(),
		a.undefineCommand(),
		a.listCommand(),
		a.dumpxmlCommand(),
		a.vmchannelCommand(),
		a.networkCommand(),
		a.startCommand(),
		a.shutdownCommand(),
		a.destroyCommand(),
		a.stopCommand(),
		a.simpleCommand("reboot", "Reboot a domain through the ACPI power button", opReboot, "is being rebooted"),
		a.simpleCommand("suspend", "Pause a domain's CPUs", opSuspend, "suspended"),
		a.simpleCommand("resume", "Resume a suspended domain", opResume, "resumed"),
		a.statusCommand(),
		a.logCommand(),
		a.consoleCommand(),
		a.qmpCommand(),
		a.runCommand(),
		a.superviseCommand(),
	)
	return root
}
