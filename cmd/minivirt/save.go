package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/manager"
)

func (a *app) saveCommand() *cobra.Command {
	var paused bool
	cmd := &cobra.Command{
		Use:   "save NAME FILE",
		Short: "Save a running domain's guest to a file and shut it off (virsh save)",
		Long: `save writes the guest's memory and device state to FILE, then shuts the
domain off (saved). ` + "`minivirt restore FILE`" + ` goes on from there, without a boot. The
file holds minivirt's header (the domain as it ran, its disks' identities, its
network's DHCP state) and QEMU's migration stream, sealed by a checksum; it
appears only once whole. With --paused, the restored guest's CPUs stay stopped.`,
		Example: "  minivirt save demo /var/tmp/demo.save\n  minivirt restore /var/tmp/demo.save",
		Args:    exactArgs("NAME", "FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.mgr.Save(cmd.Context(), args[0], args[1], manager.SaveOptions{Paused: paused}); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain '%s' saved to %s\n", args[0], args[1])
			return nil
		},
	}
	cmd.Flags().BoolVar(&paused, "paused", false, "leave the guest's CPUs stopped when it is restored")
	return cmd
}

func (a *app) restoreCommand() *cobra.Command {
	var paused bool
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Start a domain from a file `minivirt save` wrote, where it was (virsh restore)",
		Long: `restore starts the saved domain from where it was: no boot; its vmchannels,
forwards and console are served again. A file that is not minivirt's, is
truncated or damaged, or whose domain's disks changed since the save is
refused, and nothing is started or removed. A domain that is not defined is
defined from the file.`,
		Args: exactArgs("FILE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, warnings, err := a.mgr.Restore(cmd.Context(), args[0], manager.RestoreOptions{Paused: paused})
			for _, w := range warnings {
				a.warn("%s", w)
			}
			if err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain '%s' restored from %s\n", name, args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&paused, "paused", false, "leave the guest's CPUs stopped")
	return cmd
}

func (a *app) managedSaveCommand() *cobra.Command {
	var paused bool
	cmd := &cobra.Command{
		Use:   "managedsave NAME",
		Short: "Save a running domain's guest in minivirt's state; its next start goes on from it",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.mgr.ManagedSave(cmd.Context(), args[0], manager.SaveOptions{Paused: paused}); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain '%s' state saved by minivirt\n", args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&paused, "paused", false, "leave the guest's CPUs stopped when it starts again")
	return cmd
}

func (a *app) managedSaveRemoveCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "managedsave-remove NAME",
		Short: "Remove a domain's managed save: its next start boots",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.mgr.ManagedSaveRemove(args[0]); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Removed managedsave image for domain '%s'\n", args[0])
			return nil
		},
	}
}
