package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

// changeMediaCommand is virsh's change-media: eject a cdrom's or floppy's
// medium, or insert or swap one.
func (a *app) changeMediaCommand() *cobra.Command {
	var eject, insert, update, force bool
	var sc scopeFlags
	cmd := &cobra.Command{
		Use:   "change-media NAME TARGET [SOURCE]",
		Short: "Eject, insert or swap the medium of a cdrom or floppy drive",
		Long: `change-media ejects the medium of the cdrom or floppy drive TARGET (its target dev,
such as sdb), or puts the image SOURCE in, as virsh change-media does. A running domain
is changed live (the guest sees the tray open and close) unless --config is given.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 3 {
				return exactArgs("NAME", "TARGET", "SOURCE")(cmd, args)
			}
			return exactArgs("NAME", "TARGET")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			source := ""
			if len(args) == 3 {
				source = args[2]
			}
			n := 0
			for _, b := range []bool{eject, insert, update} {
				if b {
					n++
				}
			}
			switch {
			case n > 1:
				return fmt.Errorf("change-media: give one of --eject, --insert and --update")
			case eject && source != "":
				return fmt.Errorf("change-media --eject: takes no SOURCE; got %q", source)
			case (insert || update) && source == "":
				return fmt.Errorf("change-media --%s: give SOURCE, the image to put in", map[bool]string{true: "insert", false: "update"}[insert])
			case n == 0 && source == "":
				eject = true
			}
			scope, err := a.mgr.ScopeFor(args[0], sc.live, sc.config)
			if err != nil {
				return userError(err)
			}
			if err := a.mgr.ChangeMedia(cmd.Context(), args[0], args[1], source, force, scope); err != nil {
				return userError(err)
			}
			if eject {
				fmt.Fprintf(a.stdout, "Successfully ejected media%s\n", scopeWords(scope))
			} else {
				fmt.Fprintf(a.stdout, "Successfully inserted media%s\n", scopeWords(scope))
			}
			return nil
		},
	}
	sc.add(cmd)
	f := cmd.Flags()
	f.BoolVar(&eject, "eject", false, "take the medium out")
	f.BoolVar(&insert, "insert", false, "put SOURCE in an empty drive")
	f.BoolVar(&update, "update", false, "swap the medium for SOURCE (the default when SOURCE is given)")
	f.BoolVar(&force, "force", false, "open a tray the guest holds locked")
	return a.domainCommand(cmd)
}
