package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/domain"
)

// changeMediaCommand is virsh's change-media: eject a cdrom's or floppy's
// medium, or insert or swap one.
func (a *app) changeMediaCommand() *cobra.Command {
	var eject, insert, update, force bool
	var source string
	var sc scopeFlags
	cmd := &cobra.Command{
		Use:   "change-media NAME TARGET [SOURCE]",
		Short: "Eject, insert or swap the medium of a cdrom or floppy drive",
		Long: `change-media ejects the medium of the cdrom or floppy drive TARGET (its target dev,
such as sdb), or puts the image SOURCE in, as virsh change-media does. A running domain
is changed live (the guest sees the tray open and close) unless --config is given.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 3 {
				return fmt.Errorf("change-media takes NAME TARGET [SOURCE]; %q is one too many; see `%s --help`", args[3], cmd.CommandPath())
			}
			names := []string{"NAME", "TARGET", "SOURCE"}[:max(len(args), 2)]
			return exactArgs(names...)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 3 {
				if source != "" {
					return fmt.Errorf("change-media: give SOURCE once, as an argument or --source")
				}
				source = args[2]
			}
			n := 0
			for _, b := range []bool{eject, insert, update} {
				if b {
					n++
				}
			}
			mode := domain.MediaUpdate
			switch {
			case n > 1:
				return fmt.Errorf("change-media: give one of --eject, --insert and --update")
			case eject && source != "":
				return fmt.Errorf("change-media --eject: takes no SOURCE; got %q", source)
			case (insert || update) && source == "":
				return fmt.Errorf("change-media --%s: give SOURCE, the image to put in", map[bool]string{true: "insert", false: "update"}[insert])
			case eject || source == "":
				mode = domain.MediaEject
			case insert:
				mode = domain.MediaInsert
			}
			scope, err := a.mgr.ScopeFor(args[0], sc.live, sc.config)
			if err != nil {
				return userError(err)
			}
			if err := a.mgr.ChangeMedia(cmd.Context(), args[0], args[1], source, mode, force, scope); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Successfully %s media%s\n", map[domain.MediaMode]string{domain.MediaEject: "ejected",
				domain.MediaInsert: "inserted", domain.MediaUpdate: "updated"}[mode], scopeWords(scope))
			return nil
		},
	}
	sc.addWith(cmd, "change the running domain: the guest sees the tray move")
	f := cmd.Flags()
	f.StringVar(&source, "source", "", "the image to put in (or give it as SOURCE)")
	f.BoolVar(&eject, "eject", false, "take the medium out (the default without SOURCE)")
	f.BoolVar(&insert, "insert", false, "put SOURCE in an empty drive")
	f.BoolVar(&update, "update", false, "swap the medium for SOURCE (the default with SOURCE)")
	f.BoolVar(&force, "force", false, "open a tray the guest holds locked")
	a.domainCommand(cmd)
	// TARGET and SOURCE: paths, completed as files.
	cmd.ValidArgsFunction = func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
		if len(args) == 0 {
			return a.completeDomains(cmd, args, prefix)
		}
		return nil, cobra.ShellCompDirectiveDefault
	}
	return cmd
}
