package main

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"testing"
	"text/tabwriter"
)

// TestListTable checks list's table against what text/tabwriter, which it
// replaces, makes of the same rows.
func TestListTable(t *testing.T) {
	for _, rows := range [][]listRow{
		nil,
		{{name: "a", state: "shut off"}},
		{{name: "up", state: "running", id: 1}, {name: "held", state: "paused", id: 12345}, {name: "a-much-longer-name", state: "shut off"}},
		{{name: "é-ü", state: "running", id: 7}, {name: "x", state: "in shutdown", id: 8}},
		{{name: "n1", state: "shut off"}, {name: "n2", state: "crashed"}},
	} {
		var want bytes.Buffer
		tw := tabwriter.NewWriter(&want, 0, 4, 3, ' ', 0)
		fmt.Fprintln(tw, " Id\tName\tState")
		fmt.Fprintln(tw, "-----------------------------------")
		for _, r := range rows {
			id := "-"
			if r.id != 0 {
				id = strconv.Itoa(r.id)
			}
			fmt.Fprintf(tw, " %s\t%s\t%s\n", id, r.name, r.state)
		}
		fmt.Fprintln(tw)
		tw.Flush()
		var got bytes.Buffer
		out := bufio.NewWriter(&got)
		writeTable(out, rows)
		out.Flush()
		if got.String() != want.String() {
			t.Errorf("rows %+v:\ngot\n%q\nwant\n%q", rows, got.String(), want.String())
		}
	}
}
