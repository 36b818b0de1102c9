package main

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/manager"
)

// domstatsCommand is virsh domstats: each domain's statistics as key=value
// lines, or with -o json one object per domain with the same keys.
func (a *app) domstatsCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "domstats [NAME...]",
		Short: "Print domains' statistics (CPU, vCPUs, balloon, disks, network, vmchannels, forwards), as virsh domstats does",
		Long: `Print each domain's statistics as virsh domstats does: a "Domain: 'NAME'"
line, then its key=value pairs (state.state, cpu.time, balloon.*, vcpu.*,
net.*, block.*), plus minivirt's own vmchannel.N.* and forward.N.*
counters. A domain that does not run has state.state=5 (shut off) only.
net.* is there on minivirt's own network only: QEMU's user network counts
nothing. Without a name, every defined domain.`,
		Example: "  minivirt domstats demo\n  minivirt domstats demo web -o json",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			names := args
			if len(names) == 0 {
				entries, err := a.mgr.List()
				if err != nil {
					return userError(err)
				}
				for _, e := range entries {
					names = append(names, e.Name)
				}
			}
			var all []manager.DomStats
			for _, n := range names {
				name, err := a.mgr.Resolve(n)
				if err != nil {
					return userError(err)
				}
				s, err := a.mgr.DomStats(cmd.Context(), name)
				if err != nil {
					return userError(err)
				}
				all = append(all, s)
			}
			if output == "json" {
				return a.printStatsJSON(all)
			}
			for _, s := range all {
				fmt.Fprintf(a.stdout, "Domain: '%s'\n", s.Name)
				for _, f := range s.Fields() {
					fmt.Fprintf(a.stdout, "  %s=%v\n", f.Key, f.Value)
				}
				fmt.Fprintln(a.stdout)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: table or json")
	return a.domainCommand(cmd)
}

// printStatsJSON prints a JSON array of one object per domain: "domain",
// its name, then the keys of the text output in their order.
func (a *app) printStatsJSON(all []manager.DomStats) error {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, s := range all {
		if i > 0 {
			b.WriteByte(',')
		}
		name, _ := json.Marshal(s.Name)
		fmt.Fprintf(&b, `{"domain":%s`, name)
		for _, f := range s.Fields() {
			k, _ := json.Marshal(f.Key)
			v, err := json.Marshal(f.Value)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, ",%s:%s", k, v)
		}
		b.WriteByte('}')
	}
	b.WriteByte(']')
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err := a.stdout.Write(out.Bytes())
	return err
}
