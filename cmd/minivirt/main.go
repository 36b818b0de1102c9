// Command minivirt is a small, daemonless manager for QEMU/KVM virtual
// machines with libvirt's everyday verbs and domain XML, and vmchannels: guest
// TCP connections relayed one for one to host Unix sockets.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/manager"
)

func main() {
	// The vmchannel helper runs before anything that could print.
	if len(os.Args) > 1 && os.Args[1] == manager.HelperCommand {
		os.Exit(manager.RunHelper(os.Args[2:]))
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
	return runApp(&app{stdin: stdin, stdout: stdout, stderr: stderr}, args)
}

// runApp is run with the app made already: its streams, and the exec
// step of `ssh`.
func runApp(a *app, args []string) int {
	stdout, stderr := a.stdout, a.stderr
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetIn(a.stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	msg := userWords(root, err.Error())
	if msg != "" {
		fmt.Fprintf(stderr, "minivirt: %s\n", msg)
		// With -o json a script reads stdout: the error is there too.
		if f := cmd.Flags().Lookup("output"); f != nil && f.Value.String() == "json" {
			json.NewEncoder(stdout).Encode(map[string]string{"error": msg})
		}
	}
	return code
}

// userWords puts cobra's own errors in the user's terms, on one line.
func userWords(root *cobra.Command, msg string) string {
	msg = oneLine(msg)
	rest, ok := strings.CutPrefix(msg, "unknown command ")
	if !ok {
		return msg
	}
	// cobra: unknown command "x" for "minivirt vmchannel" Did you mean this? y
	quoted, tail, _ := strings.Cut(rest, " for ")
	parentPath, sugg, _ := strings.Cut(tail, " Did you mean this? ")
	parentPath = strings.Trim(parentPath, `"`)
	if sugg != "" {
		return fmt.Sprintf("unknown command %s for %q; did you mean %q? See `%s --help`", quoted, parentPath, strings.Fields(sugg)[0], parentPath)
	}
	parent, _, err := root.Find(strings.Fields(parentPath)[1:])
	if err != nil {
		parent = root
	}
	var names []string
	for _, c := range parent.Commands() {
		if c.IsAvailableCommand() {
			names = append(names, c.Name())
		}
	}
	return fmt.Sprintf("unknown command %s for %q; it has: %s", quoted, parentPath, strings.Join(names, ", "))
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
	root.SetFlagErrorFunc(flagError)
	f := root.PersistentFlags()
	f.StringVar(&a.stateDir, "state-dir", "", "state directory (definitions, logs); default $MINIVIRT_STATE_DIR, /var/lib/minivirt for root, else $XDG_DATA_HOME/minivirt")
	f.StringVar(&a.runDir, "run-dir", "", "runtime directory (sockets, pids); default $MINIVIRT_RUN_DIR, /run/minivirt for root, else $XDG_RUNTIME_DIR/minivirt")
	f.DurationVar(&a.lockTimeout, "lock-timeout", defaultLockTimeout, "how long to wait for another minivirt that holds the state database")
	root.PersistentPreRunE = func(cmd *cobra.Command, args []string) error {
		if err := a.resolveDirs(); err != nil {
			return err
		}
		// virsh takes a uuid wherever it takes a name: the first argument
		// of a domain verb becomes the name here, for every verb at once.
		// cobra hands RunE this same slice.
		if cmd.Annotations[domainArg] == "true" && len(args) > 0 {
			name, err := a.mgr.Resolve(args[0])
			if err != nil {
				return userError(err)
			}
			args[0] = name
		}
		return nil
	}

	root.AddCommand(
		a.defineCommand(),
		a.createCommand(),
		a.undefineCommand(),
		a.listCommand(),
		a.dumpxmlCommand(),
		a.vmchannelCommand(),
		a.networkCommand(),
		a.portCommand(),
		a.startCommand(),
		a.shutdownCommand(),
		a.destroyCommand(),
		a.stopCommand(),
		a.rebootCommand(),
		a.simpleCommand("suspend", "Pause a domain's CPUs", (*manager.Manager).Suspend, "suspended"),
		a.simpleCommand("resume", "Resume a suspended domain", (*manager.Manager).Resume, "resumed"),
		a.statusCommand(),
		a.logCommand(),
		a.consoleCommand(),
		a.qmpCommand(),
		a.runCommand(),
		a.superviseCommand(),
		a.dominfoCommand(),
		a.domstatsCommand(),
		a.domstateCommand(),
		a.domifaddrCommand(),
		a.guestinfoCommand(),
		a.agentCommandCommand(),
		a.autostartCommand(),
		a.editCommand(),
		a.sshCommand(),
		a.sshConfigCommand(),
		a.saveCommand(),
		a.restoreCommand(),
		a.managedSaveCommand(),
		a.managedSaveRemoveCommand(),
		a.snapshotCreateCommand(),
		a.snapshotListCommand(),
		a.snapshotRevertCommand(),
		a.snapshotDeleteCommand(),
		a.snapshotCurrentCommand(),
		a.changeMediaCommand(),
	)
	root.AddCommand(a.lookupCommands()...)
	for _, c := range root.Commands() {
		switch c.Name() {
		case "undefine", "dumpxml", "start", "shutdown", "destroy", "stop", "reboot", "suspend", "resume", "status", "log", "console", "qmp", "ssh", "ssh-config", "save", "managedsave", "managedsave-remove", "snapshot-create-as", "snapshot-list", "snapshot-revert", "snapshot-delete", "snapshot-current":
			a.domainCommand(c)
		}
		for _, sub := range c.Commands() {
			if c.Name() == "vmchannel" || c.Name() == "network" || c.Name() == "port" {
				a.domainCommand(sub)
			}
		}
	}
	addExamples(root)
	return root
}

// flagError words a flag that did not parse, without the parser's words.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	// pflag: invalid argument "-1" for "--port" flag: strconv.ParseUint: ...
	if rest, ok := strings.CutPrefix(msg, "invalid argument "); ok {
		value, tail, _ := strings.Cut(rest, " for ")
		flag, _, _ := strings.Cut(strings.TrimPrefix(tail, "\""), "\"")
		name := strings.TrimLeft(strings.Split(flag, ",")[len(strings.Split(flag, ","))-1], "- ")
		want := "a valid value"
		if f := cmd.Flags().Lookup(name); f != nil {
			want = map[string]string{"uint": "a whole number, 0 or more", "int": "a whole number", "duration": "a duration such as 90s or 2m",
				"bool": "true or false", "string": "text"}[f.Value.Type()]
		}
		return fmt.Errorf("flag --%s %s: must be %s", name, value, want)
	}
	return fmt.Errorf("%s; see `%s --help`", msg, cmd.CommandPath())
}
