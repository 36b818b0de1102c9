package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/store"
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
			var entries []store.Entry
			err := a.withStore(func(s *store.Store) error {
				var err error
				if entries, err = s.List(); err != nil {
					return err
				}
				// A record that claims a running domain is checked against its pids.
				for i, e := range entries {
					if !e.Runtime.Active() {
						continue
					}
					d, err := s.Get(e.Name)
					if err != nil {
						return err
					}
					o, err := launcher.Observe(s, d, a.domainRunDir(e.Name))
					if err != nil {
						return err
					}
					entries[i].Runtime = o.Runtime
				}
				return nil
			})
			if err != nil {
				return err
			}
			items := []listItem{}
			for _, e := range entries {
				if all || e.Runtime.Active() {
					items = append(items, listItem{Name: e.Name, UUID: e.UUID, State: e.Runtime.State, Reason: e.Runtime.Reason})
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
