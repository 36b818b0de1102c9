package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/manager"
)

// domainCommand marks cmd as one whose first argument is a domain: a name
// or a uuid, as virsh takes either (see rootCommand), completed from the
// store.
func (a *app) domainCommand(cmd *cobra.Command) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[domainArg] = "true"
	cmd.ValidArgsFunction = a.completeDomains
	return cmd
}

const domainArg = "domain-arg"

// completeDomains completes the first argument with the names of defined
// domains.
func (a *app) completeDomains(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	if err := a.resolveDirs(); err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	entries, err := a.mgr.List()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name, prefix) {
			names = append(names, e.Name)
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

// domainInfo is `dominfo -o json`.
type domainInfo struct {
	ID          *int   `json:"id"`
	Name        string `json:"name"`
	UUID        string `json:"uuid"`
	OSType      string `json:"os_type"`
	State       string `json:"state"`
	CPUs        uint   `json:"cpus"`
	MaxMemory   uint   `json:"max_memory_kib"`
	UsedMemory  uint   `json:"used_memory_kib"`
	Persistent  bool   `json:"persistent"`
	Autostart   bool   `json:"autostart"`
	ManagedSave bool   `json:"managed_save"`
	// Kept and RefusedAtStart are as in status.
	Kept           []string `json:"kept,omitempty"`
	RefusedAtStart []string `json:"refused_at_start,omitempty"`
}

func (a *app) dominfoCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "dominfo NAME",
		Short:   "Show a domain's basic information, as virsh dominfo does",
		Example: "  minivirt dominfo demo\n  minivirt dominfo demo -o json",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			d, o, err := a.mgr.Observe(args[0])
			if err != nil {
				return userError(err)
			}
			auto, err := a.mgr.Autostart(args[0])
			if err != nil {
				return err
			}
			cpus := d.VCPU.Value
			if d.VCPU.Current != 0 {
				cpus = d.VCPU.Current
			}
			info := domainInfo{Name: d.Name, UUID: d.UUID, OSType: d.OS.Type.Type, State: o.State, CPUs: cpus,
				MaxMemory: d.Memory.Value, UsedMemory: d.Memory.Value, Persistent: true, Autostart: auto,
				ManagedSave: a.mgr.HasManagedSave(d.Name), Kept: d.KeptElements(), RefusedAtStart: d.RefusedAtStart()}
			if t := d.BalloonTarget(); t != 0 {
				info.UsedMemory = t
			}
			if o.Active() && o.ID != 0 {
				id := o.ID
				info.ID = &id
			}
			if output == "json" {
				return a.printJSON(info)
			}
			id := "-"
			if info.ID != nil {
				id = strconv.Itoa(*info.ID)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 1, ' ', 0)
			fmt.Fprintf(w, "Id:\t%s\nName:\t%s\nUUID:\t%s\nOS Type:\t%s\nState:\t%s\nCPU(s):\t%d\n", id, info.Name, info.UUID, info.OSType, info.State, info.CPUs)
			fmt.Fprintf(w, "Max memory:\t%d KiB\nUsed memory:\t%d KiB\nPersistent:\tyes\nAutostart:\t%s\nManaged save:\t%s\nSecurity model:\tnone\nSecurity DOI:\t0\n",
				info.MaxMemory, info.UsedMemory, map[bool]string{true: "enable", false: "disable"}[auto], map[bool]string{true: "yes", false: "no"}[info.ManagedSave])
			if len(info.Kept) > 0 {
				fmt.Fprintf(w, "Kept:\t%s (not applied)\n", strings.Join(info.Kept, ", "))
			}
			for _, why := range info.RefusedAtStart {
				fmt.Fprintf(w, "Cannot start:\t%s\n", why)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: table or json")
	return a.domainCommand(cmd)
}

func (a *app) domstateCommand() *cobra.Command {
	var reason bool
	cmd := &cobra.Command{
		Use:     "domstate NAME",
		Short:   "Print a domain's state, with --reason its reason",
		Example: "  minivirt domstate demo\n  minivirt domstate demo --reason",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := a.mgr.Status(cmd.Context(), args[0])
			if err != nil {
				return userError(err)
			}
			if reason && st.Reason != "" {
				fmt.Fprintf(a.stdout, "%s (%s)\n\n", st.State, st.Reason)
			} else {
				fmt.Fprintf(a.stdout, "%s\n\n", st.State)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&reason, "reason", false, "also print why the domain is in that state")
	return a.domainCommand(cmd)
}

// lookupCommand is one of domuuid, domname, domid: one field of a domain.
func (a *app) lookupCommand(use, short, example string, field func(name string, o manager.Observed, d *domain.Domain) string) *cobra.Command {
	return a.domainCommand(&cobra.Command{
		Use:     use,
		Short:   short,
		Example: example,
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, o, err := a.mgr.Observe(args[0])
			if err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "%s\n\n", field(args[0], o, d))
			return nil
		},
	})
}

func (a *app) lookupCommands() []*cobra.Command {
	return []*cobra.Command{
		a.lookupCommand("domuuid NAME", "Print a domain's uuid", "  minivirt domuuid demo",
			func(_ string, _ manager.Observed, d *domain.Domain) string { return d.UUID }),
		a.lookupCommand("domname UUID", "Print the name of the domain with a uuid", "  minivirt domname 0b6c8e5a-3f1d-4c2e-9a7b-5d4e3f2a1b0c",
			func(name string, _ manager.Observed, _ *domain.Domain) string { return name }),
		a.lookupCommand("domid NAME", "Print a running domain's id (- when it is shut off)", "  minivirt domid demo",
			func(_ string, o manager.Observed, _ *domain.Domain) string {
				if !o.Active() || o.ID == 0 {
					return "-"
				}
				return strconv.Itoa(o.ID)
			}),
	}
}

// addressRow is one row of domifaddr: one address of one interface.
type addressRow struct {
	Name     string `json:"name"`
	MAC      string `json:"mac"`
	Protocol string `json:"protocol"` // "" for an interface without addresses
	Address  string `json:"address"`
	Source   string `json:"source"`
	more     bool   // the interface's address after its first
}

func (a *app) domifaddrCommand() *cobra.Command {
	var output, source string
	cmd := &cobra.Command{
		Use:   "domifaddr NAME [--source lease|agent] [-o json]",
		Short: "Show the guest's addresses: its DHCP lease on minivirt's network, QEMU's user network's fixed one, or the guest agent's",
		Long: `domifaddr shows the guest's addresses. With --source lease (the default) they are
what minivirt knows: the DHCP lease on minivirt's own network, or the fixed 10.0.2.15 of
QEMU's user network. With --source agent they are every interface and address the
guest agent reports (guest-network-get-interfaces), as virsh domifaddr --source agent
prints them; that needs qemu-guest-agent running in the guest and the domain's
` + domain.AgentChannel + ` channel.`,
		Example: "  minivirt domifaddr demo\n  minivirt domifaddr demo -o json\n  minivirt domifaddr demo --source agent",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			var rows []addressRow
			var err error
			switch source {
			case "lease":
				rows, err = a.leaseAddresses(cmd.Context(), args[0])
			case "agent":
				rows, err = a.agentAddresses(cmd.Context(), args[0])
			default:
				return fmt.Errorf("--source %q: give lease (minivirt's DHCP lease, the default) or agent (the guest agent's)", source)
			}
			if err != nil {
				return userError(err)
			}
			if output == "json" {
				return a.printJSON(rows)
			}
			if source == "agent" {
				return a.printVirshAddresses(rows)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(w, " Name\tMAC address\tProtocol\tAddress")
			fmt.Fprintln(w, addressRule)
			for _, r := range rows {
				fmt.Fprintf(w, " %s\t%s\t%s\t%s\n", r.Name, r.MAC, r.Protocol, r.Address)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: table or json")
	cmd.Flags().StringVar(&source, "source", "lease", "where the addresses come from: lease or agent")
	return a.domainCommand(cmd)
}

const addressRule = "-------------------------------------------------------------------------------"

// printVirshAddresses prints rows as virsh domifaddr does, column for
// column: an interface is named on its first address only, and one without
// addresses has N/A for them.
func (a *app) printVirshAddresses(rows []addressRow) error {
	fmt.Fprintf(a.stdout, " %-10s %-20s %-8s     %s\n%s\n", "Name", "MAC address", "Protocol", "Address", addressRule)
	for _, r := range rows {
		switch {
		case r.more:
			r.Name, r.MAC = "-", "-"
		case r.Protocol == "":
			r.Protocol, r.Address = "N/A", "N/A"
			if r.MAC == "" {
				r.MAC = "N/A"
			}
		}
		if _, err := fmt.Fprintf(a.stdout, " %-10s %-17s    %-12s %s\n", r.Name, r.MAC, r.Protocol, r.Address); err != nil {
			return err
		}
	}
	return nil
}

// leaseAddresses are the addresses the supervisor knows: its DHCP leases,
// or the user network's fixed address.
func (a *app) leaseAddresses(ctx context.Context, name string) ([]addressRow, error) {
	st, err := a.mgr.LiveStatus(ctx, name)
	if err != nil {
		return nil, err
	}
	if !st.Active() {
		return nil, fmt.Errorf("domain %s is not running", name)
	}
	rows := []addressRow{}
	if st.Live != nil {
		for _, ad := range st.Live.Addresses {
			rows = append(rows, addressRow{Name: ad.Interface, MAC: ad.MAC, Protocol: "ipv4", Address: ad.Address.String(), Source: ad.Source})
		}
	}
	return rows, nil
}

// agentAddresses are the addresses the guest agent reports, address/prefix.
func (a *app) agentAddresses(ctx context.Context, name string) ([]addressRow, error) {
	ifaces, err := a.mgr.AgentAddresses(ctx, name, 0)
	if err != nil {
		return nil, err
	}
	rows := []addressRow{}
	for _, ifc := range ifaces {
		if len(ifc.Addresses) == 0 {
			rows = append(rows, addressRow{Name: ifc.Name, MAC: ifc.MAC, Source: "agent"})
		}
		for i, ad := range ifc.Addresses {
			rows = append(rows, addressRow{Name: ifc.Name, MAC: ifc.MAC, Protocol: ad.Type, Address: fmt.Sprintf("%s/%d", ad.Address, ad.Prefix),
				Source: "agent", more: i > 0})
		}
	}
	return rows, nil
}

// autostartUnit is the systemd unit that starts marked domains at boot; %s
// is its command line, from execStart. No other line holds a path.
const autostartUnit = `[Unit]
Description=Start the minivirt domains marked for autostart
After=network-online.target local-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%s

[Install]
WantedBy=multi-user.target
`

func (a *app) autostartCommand() *cobra.Command {
	var disable, install bool
	var unitDir string
	cmd := &cobra.Command{
		Use:   "autostart NAME [--disable] | --install-unit",
		Short: "Mark a domain to start when the host boots; --install-unit writes the systemd unit that does it",
		Long: `minivirt has no daemon: a domain marked with autostart is started at boot by
` + "`minivirt start --autostart`" + `, which the systemd unit written by
` + "`minivirt autostart --install-unit`" + ` runs once.`,
		Example: `  minivirt autostart demo
  minivirt autostart demo --disable
  minivirt autostart --install-unit && systemctl enable minivirt-autostart.service`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if install {
				if len(args) != 0 {
					return fmt.Errorf("autostart --install-unit takes no domain")
				}
				return a.installAutostartUnit(unitDir)
			}
			if len(args) != 1 {
				return fmt.Errorf("autostart: give the domain's name (or --install-unit); see `minivirt autostart --help`")
			}
			if err := a.mgr.SetAutostart(args[0], !disable); err != nil {
				return userError(err)
			}
			if disable {
				fmt.Fprintf(a.stdout, "Domain '%s' unmarked as autostarted\n\n", args[0])
			} else {
				fmt.Fprintf(a.stdout, "Domain '%s' marked as autostarted\n\n", args[0])
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&disable, "disable", false, "clear the mark")
	cmd.Flags().BoolVar(&install, "install-unit", false, "write the systemd unit that starts marked domains at boot")
	cmd.Flags().StringVar(&unitDir, "unit-dir", "/etc/systemd/system", "with --install-unit: where to write the unit")
	return a.domainCommand(cmd)
}

func (a *app) installAutostartUnit(dir string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	exec, err := execStart([]string{self, "--state-dir", a.stateDir, "--run-dir", a.runDir, "start", "--autostart"})
	if err != nil {
		return fmt.Errorf("autostart --install-unit: %w", err)
	}
	path := filepath.Join(dir, "minivirt-autostart.service")
	if err := os.WriteFile(path, []byte(fmt.Sprintf(autostartUnit, exec)), 0o644); err != nil {
		return fmt.Errorf("autostart --install-unit: %w", err)
	}
	fmt.Fprintf(a.stdout, "Wrote %s; enable it with: systemctl enable minivirt-autostart.service\n", path)
	return nil
}

// execStart writes argv, whose first word is an absolute path, as the
// value of a systemd ExecStart= setting that runs exactly argv, by the rules
// of systemd.service(5) "Command lines": every word goes through
// systemdWord, for a path may hold anything. systemd expands variables in
// argv but not in the executable's path, where a $$ would stay doubled;
// so a path holding $ is given twice, with the "@" prefix: once as the
// executable, once as argv[0].
//
// A path systemd will not run (a quote, a backslash or a control character
// in it: "Executable name contains special characters") is refused here,
// where the user can still act on it, rather than found at boot.
func execStart(argv []string) (string, error) {
	exe := argv[0]
	if !filepath.IsAbs(exe) {
		return "", fmt.Errorf("minivirt's path %q is not absolute", exe)
	}
	if strings.ContainsFunc(exe, func(r rune) bool { return r == '"' || r == '\'' || r == '\\' || isControl(r) }) {
		return "", fmt.Errorf("minivirt's path %q holds a quote, a backslash or a control character, which systemd refuses in the program it runs; install minivirt elsewhere", exe)
	}
	words := []string{systemdWord(exe, false)}
	if strings.Contains(exe, "$") {
		words = []string{"@" + words[0], systemdWord(exe, true)}
	}
	for _, arg := range argv[1:] {
		words = append(words, systemdWord(arg, true))
	}
	return strings.Join(words, " "), nil
}

// systemdWord writes s as one word of a systemd command line
// (systemd.service(5) "Command lines", systemd.syntax(7) "Quoting"). A word
// of plain path characters stays as it is, so a common unit reads plainly;
// any other is put in double quotes, in which \ and \" are escaped and a
// control character or a byte that is not UTF-8 is written \xNN, which
// systemd decodes to that byte (the unit is one line of UTF-8 text). Then,
// quoted or not: % is written %%, as systemd resolves specifiers in every
// word, and, if variables is set, $ is written $$, as systemd expands
// variables.
func systemdWord(s string, variables bool) string {
	var b strings.Builder
	plain := s != ""
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1, isControl(r):
			fmt.Fprintf(&b, `\x%02x`, s[i])
			plain = false
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
			plain = false
		case r == '%':
			b.WriteString("%%")
		case r == '$' && variables:
			b.WriteString("$$")
		default:
			b.WriteRune(r)
			plain = plain && (r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r)) || strings.ContainsRune("/._-+,:=@$", r))
		}
		i += n
	}
	if plain {
		return b.String()
	}
	return `"` + b.String() + `"`
}

// isControl reports an ASCII control character, as systemd counts them.
func isControl(r rune) bool { return r < ' ' || r == 0x7f }

// startMarked is `start --autostart`.
func (a *app) startMarked(ctx context.Context) error {
	results, err := a.mgr.StartMarked(ctx)
	if err != nil {
		return err
	}
	failed := 0
	for _, r := range results {
		for _, w := range r.Warnings {
			a.warn("%s", w)
		}
		switch {
		case r.Already:
			fmt.Fprintf(a.stdout, "Domain %s is already running\n", r.Name)
		case r.Err != nil:
			failed++
			fmt.Fprintf(a.stderr, "minivirt: %s\n", oneLine(r.Err.Error()))
		default:
			fmt.Fprintf(a.stdout, "Domain %s started\n", r.Name)
		}
	}
	if failed > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d of %d marked domains did not start", failed, len(results))}
	}
	return nil
}

func (a *app) editCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "edit NAME",
		Short: "Edit a domain's XML in $VISUAL or $EDITOR; it is defined only if it validates",
		Long: `edit opens the domain's XML in $VISUAL, else $EDITOR, else vi. When the editor
exits, the new text is defined as a whole, or not at all: on an error edit says
why and, on a terminal, offers to edit again. The store is unchanged unless the
edited text defines.`,
		Example: "  minivirt edit demo\n  EDITOR=nano minivirt edit demo",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.edit(args[0])
		},
	}
	return a.domainCommand(cmd)
}

func (a *app) edit(name string) error {
	d, err := a.mgr.Get(name)
	if err != nil {
		return userError(err)
	}
	orig, err := d.XML()
	if err != nil {
		return err
	}
	f, err := os.CreateTemp("", "minivirt-edit-*.xml")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	f.Close()
	text := orig
	in := bufio.NewReader(a.stdin)
	for {
		if err := os.WriteFile(f.Name(), text, 0o600); err != nil {
			return err
		}
		if err := a.runEditor(f.Name()); err != nil {
			return err
		}
		edited, err := os.ReadFile(f.Name())
		if err != nil {
			return err
		}
		if bytes.Equal(edited, orig) {
			fmt.Fprintf(a.stdout, "Domain '%s' XML configuration not changed.\n", name)
			return nil
		}
		err = a.defineEdited(name, edited)
		if err == nil {
			fmt.Fprintf(a.stdout, "Domain '%s' XML configuration edited.\n", name)
			return nil
		}
		fmt.Fprintf(a.stderr, "minivirt: %s\n", oneLine(err.Error()))
		fmt.Fprint(a.stderr, "Failed. Try again? [y,n]: ")
		answer, _ := in.ReadString('\n')
		if strings.TrimSpace(strings.ToLower(answer)) != "y" {
			return &exitError{code: 1, err: fmt.Errorf("edit %s: not changed", name)}
		}
		text = edited
	}
}

// defineEdited defines the edited text, refusing a rename: the text must
// still describe the domain being edited.
func (a *app) defineEdited(name string, text []byte) error {
	d, err := domain.Parse(bytes.NewReader(text))
	if err == nil {
		err = d.Validate()
	}
	if err != nil {
		return err
	}
	if d.Name != name {
		return fmt.Errorf("edit: the name changed from %s to %s; edit keeps the name (define a new domain for another)", name, d.Name)
	}
	_, _, err = a.mgr.Define(d)
	return err
}

func (a *app) runEditor(path string) error {
	editor := os.Getenv("VISUAL")
	if editor == "" {
		editor = os.Getenv("EDITOR")
	}
	if editor == "" {
		editor = "vi"
	}
	// As virsh does, the editor setting may carry arguments.
	words := strings.Fields(editor)
	cmd := exec.Command(words[0], append(words[1:], path)...)
	if f, ok := a.stdin.(*os.File); ok {
		cmd.Stdin = f
	}
	cmd.Stdout, cmd.Stderr = a.stdout, a.stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("edit: the editor %s failed: %w", editor, err)
	}
	return nil
}

// groupCommand is a command that only holds subcommands: without one, or
// with one it does not know, it fails and names what it has.
func groupCommand(cmd *cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(c *cobra.Command, args []string) error {
		var names []string
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() {
				names = append(names, sub.Name())
			}
		}
		if len(args) == 0 {
			return fmt.Errorf("%s needs a subcommand: %s", c.CommandPath(), strings.Join(names, ", "))
		}
		if best := closest(args[0], names); best != "" {
			return fmt.Errorf("%s has no command %q; did you mean %q?", c.CommandPath(), args[0], best)
		}
		return fmt.Errorf("%s has no command %q; it has: %s", c.CommandPath(), args[0], strings.Join(names, ", "))
	}
	return cmd
}

// closest returns the name nearest to typed within two edits, or "".
func closest(typed string, names []string) string {
	best, bestDist := "", 3
	for _, n := range names {
		if d := editDistance(typed, n); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
