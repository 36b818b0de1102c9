package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/manager"
)

func (a *app) snapshotCreateCommand() *cobra.Command {
	var diskOnly bool
	cmd := &cobra.Command{
		Use:   "snapshot-create-as NAME SNAP [--disk-only]",
		Short: "Take an internal snapshot of a domain's qcow2 disks (with the guest's state when it runs)",
		Long: `snapshot-create-as takes an internal snapshot SNAP of every writable disk of
the domain, which must be qcow2 files (a raw or transient disk refuses it, by
name; read-only disks and CD-ROMs are left out, as QEMU leaves them). While the
domain runs the snapshot holds the guest's memory and device state too, unless
--disk-only; of a shut-off domain it holds the disks.`,
		Args: exactArgs("NAME", "SNAP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := a.mgr.SnapshotCreate(cmd.Context(), args[0], args[1], manager.SnapshotOptions{DiskOnly: diskOnly})
			if err != nil {
				return userError(err)
			}
			for _, d := range s.Left {
				a.warn("disk %s is not in snapshot %s: internal snapshots leave read-only disks out", d, s.Name)
			}
			fmt.Fprintf(a.stdout, "Domain snapshot %s created\n", args[1])
			return nil
		},
	}
	cmd.Flags().BoolVar(&diskOnly, "disk-only", false, "leave the guest's memory out")
	return cmd
}

func (a *app) snapshotListCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "snapshot-list NAME",
		Short: "List a domain's snapshots",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			snaps, err := a.mgr.SnapshotList(args[0])
			if err != nil {
				return userError(err)
			}
			if output == "json" {
				if snaps == nil {
					snaps = []manager.Snapshot{}
				}
				return a.printJSON(snaps)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintf(w, " Name\tCreation Time\tState\n")
			for _, s := range snaps {
				fmt.Fprintf(w, " %s\t%s\t%s\n", s.Name, s.Created.Format("2006-01-02 15:04:05 -0700"), s.State)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "json for a machine-readable list")
	return cmd
}

func (a *app) snapshotRevertCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "snapshot-revert NAME SNAP",
		Short: "Revert a domain to a snapshot",
		Long: `snapshot-revert brings the domain back to snapshot SNAP. A snapshot taken while
the domain ran holds the guest's state: the guest goes on from there (a
shut-off domain is started for it). A snapshot of the disks alone needs the
domain shut off.`,
		Args: exactArgs("NAME", "SNAP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.mgr.SnapshotRevert(cmd.Context(), args[0], args[1]); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s reverted to snapshot %s\n", args[0], args[1])
			return nil
		},
	}
}

func (a *app) snapshotDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "snapshot-delete NAME SNAP",
		Short: "Delete a domain's snapshot from its disks",
		Args:  exactArgs("NAME", "SNAP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := a.mgr.SnapshotDelete(cmd.Context(), args[0], args[1]); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain snapshot %s deleted\n", args[1])
			return nil
		},
	}
}

func (a *app) snapshotCurrentCommand() *cobra.Command {
	var nameOnly bool
	cmd := &cobra.Command{
		Use:   "snapshot-current NAME [--name]",
		Short: "Print a domain's current snapshot: the one last taken or reverted to",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cur, err := a.mgr.SnapshotCurrent(args[0])
			if err != nil {
				return userError(err)
			}
			fmt.Fprintln(a.stdout, cur)
			return nil
		},
	}
	cmd.Flags().BoolVar(&nameOnly, "name", false, "print the name only (minivirt always does: it keeps no snapshot XML)")
	return cmd
}
