package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// listItem is one row of `list -o json`.
type listItem struct {
	Name   string `json:"name"`
	UUID   string `json:"uuid"`
	State  string `json:"state"`
	Reason string `json:"reason,omitempty"`
}

func (a *app) listCommand() *cobra.Command {
	var all bool
	var output string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List running domains, or all with --all",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			entries, err := a.mgr.List()
			if err != nil {
				return err
			}
			items := []listItem{}
			for _, e := range entries {
				if all || e.Active() {
					items = append(items, listItem{Name: e.Name, UUID: e.UUID, State: e.State, Reason: e.Reason})
				}
			}
			// One write for the whole list, not one per table cell.
			out := bufio.NewWriter(a.stdout)
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(items); err != nil {
					return err
				}
				return out.Flush()
			}
			tw := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, " Name\tState")
			fmt.Fprintln(tw, "------\t-------")
			for _, it := range items {
				fmt.Fprintf(tw, " %s\t%s\n", it.Name, it.State)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			return out.Flush()
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "list defined domains that are shut off too")
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: table or json")
	return cmd
}
