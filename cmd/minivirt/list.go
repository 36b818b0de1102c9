package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/manager"
)

// listItem is one row of `list -o json`.
type listItem struct {
	ID        *int   `json:"id"`
	Name      string `json:"name"`
	UUID      string `json:"uuid"`
	State     string `json:"state"`
	Reason    string `json:"reason,omitempty"`
	Autostart bool   `json:"autostart"`
}

// listFilter is virsh list's flags.
type listFilter struct {
	all, inactive, running, shutoff, paused, autostart, noAutostart bool
}

// match reports whether an entry passes the filter, as virsh list does:
// running domains by default; --all or --inactive for the others; the
// --state-* flags choose states, and any of them replaces the default.
func (f listFilter) match(e manager.Entry) bool {
	if f.autostart && !e.Autostart || f.noAutostart && e.Autostart {
		return false
	}
	if f.running || f.shutoff || f.paused {
		return f.running && e.State == manager.StateRunning ||
			f.shutoff && e.State == manager.StateShutoff ||
			f.paused && e.State == manager.StatePaused
	}
	switch {
	case f.all:
		return true
	case f.inactive:
		return !e.Active()
	}
	return e.Active()
}

func (a *app) listCommand() *cobra.Command {
	var f listFilter
	var names, uuids bool
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
				if !f.match(e) {
					continue
				}
				it := listItem{Name: e.Name, UUID: e.UUID, State: e.State, Reason: e.Reason, Autostart: e.Autostart}
				if e.Active() && e.ID != 0 {
					id := e.ID
					it.ID = &id
				}
				items = append(items, it)
			}
			// One write for the whole list, not one per table cell.
			out := bufio.NewWriter(a.stdout)
			defer out.Flush()
			switch {
			case output == "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(items)
			case names || uuids:
				for _, it := range items {
					switch {
					case names && uuids:
						fmt.Fprintf(out, "%s  %s\n", it.UUID, it.Name)
					case uuids:
						fmt.Fprintln(out, it.UUID)
					default:
						fmt.Fprintln(out, it.Name)
					}
				}
				fmt.Fprintln(out)
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, " Id\tName\tState")
			fmt.Fprintln(tw, "-----------------------------------")
			for _, it := range items {
				id := "-"
				if it.ID != nil {
					id = strconv.Itoa(*it.ID)
				}
				fmt.Fprintf(tw, " %s\t%s\t%s\n", id, it.Name, it.State)
			}
			fmt.Fprintln(tw)
			return tw.Flush()
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.all, "all", false, "list shut off domains too")
	fl.BoolVar(&f.inactive, "inactive", false, "list shut off domains only")
	fl.BoolVar(&f.running, "state-running", false, "list running domains")
	fl.BoolVar(&f.shutoff, "state-shutoff", false, "list shut off domains")
	fl.BoolVar(&f.paused, "state-paused", false, "list paused domains")
	fl.BoolVar(&f.autostart, "autostart", false, "list domains marked for autostart")
	fl.BoolVar(&f.noAutostart, "no-autostart", false, "list domains not marked for autostart")
	fl.BoolVar(&names, "name", false, "print names only")
	fl.BoolVar(&uuids, "uuid", false, "print uuids only")
	fl.StringVarP(&output, "output", "o", "", "output format: table or json")
	return cmd
}
