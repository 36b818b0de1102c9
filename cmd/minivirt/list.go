package main

import (
	"bufio"
	"encoding/json"
	"strconv"
	"unicode/utf8"

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
func (f listFilter) match(e *manager.Entry) bool {
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

// listRow is one row of list's table. Its strings are the engine's, not
// copies: a row costs no allocation of its own.
type listRow struct {
	name, state string
	id          int // 0: none (shut off)
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
			l, err := a.mgr.Listing()
			if err != nil {
				return err
			}
			// One write for the whole list, or one per 64 KiB, not one
			// per line.
			out := bufio.NewWriterSize(a.stdout, 64<<10)
			switch {
			case output == "json":
				err = writeListJSON(out, l, f)
			case names || uuids:
				err = writeListNames(out, l, f, names, uuids)
			default:
				err = writeListTable(out, l, f)
			}
			if err != nil {
				return err
			}
			return out.Flush()
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

// id is the id list shows of an entry: 0 for none.
func id(e *manager.Entry) int {
	if e.Active() {
		return e.ID
	}
	return 0
}

// writeListJSON writes the entries f matches as `list -o json`.
func writeListJSON(out *bufio.Writer, l *manager.Listing, f listFilter) error {
	items := []listItem{}
	for l.Next() {
		e := l.Entry()
		if !f.match(e) {
			continue
		}
		it := listItem{Name: e.Name, UUID: e.UUID, State: e.State, Reason: e.Reason, Autostart: e.Autostart}
		if id := id(e); id != 0 {
			it.ID = &id
		}
		items = append(items, it)
	}
	if err := l.Err(); err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(items)
}

// writeListNames writes the names or uuids (or both) of the entries f
// matches, one a line, and an empty line.
func writeListNames(out *bufio.Writer, l *manager.Listing, f listFilter, names, uuids bool) error {
	for l.Next() {
		e := l.Entry()
		if !f.match(e) {
			continue
		}
		switch {
		case names && uuids:
			out.WriteString(e.UUID)
			out.WriteString("  ")
			out.WriteString(e.Name)
		case uuids:
			out.WriteString(e.UUID)
		default:
			out.WriteString(e.Name)
		}
		out.WriteByte('\n')
	}
	out.WriteByte('\n')
	return l.Err()
}

// listPadding is the spaces after the widest cell of a table column.
const listPadding = 3

// writeListTable writes the entries f matches as virsh list's table.
func writeListTable(out *bufio.Writer, l *manager.Listing, f listFilter) error {
	rows := make([]listRow, 0, l.Len())
	for l.Next() {
		if e := l.Entry(); f.match(e) {
			rows = append(rows, listRow{name: e.Name, state: e.State, id: id(e)})
		}
	}
	if err := l.Err(); err != nil {
		return err
	}
	writeTable(out, rows)
	return nil
}

// writeTable writes rows as what a text/tabwriter (padding 3, spaces)
// makes of " Id\tName\tState" lines, with the widths found in a first pass
// over the rows rather than by buffering every cell. The header is a
// column block of its own: the dashed line under it has no cells.
func writeTable(out *bufio.Writer, rows []listRow) {
	out.WriteString(" Id   Name   State\n")
	out.WriteString("-----------------------------------\n")
	var num [24]byte
	idWidth, nameWidth := 0, 0
	for _, r := range rows {
		idWidth = max(idWidth, len(listID(num[:0], r.id)))
		nameWidth = max(nameWidth, utf8.RuneCountInString(r.name))
	}
	for _, r := range rows {
		id := listID(num[:0], r.id)
		out.Write(id)
		pad(out, idWidth+listPadding-len(id))
		out.WriteString(r.name)
		pad(out, nameWidth+listPadding-utf8.RuneCountInString(r.name))
		out.WriteString(r.state)
		out.WriteByte('\n')
	}
	out.WriteByte('\n')
}

// listID appends the Id cell of a row to dst: " " and the id, or " -".
func listID(dst []byte, id int) []byte {
	dst = append(dst, ' ')
	if id == 0 {
		return append(dst, '-')
	}
	return strconv.AppendInt(dst, int64(id), 10)
}

// pad writes n spaces.
func pad(out *bufio.Writer, n int) {
	for ; n > 0; n-- {
		out.WriteByte(' ')
	}
}
