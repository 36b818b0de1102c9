package main

import (
	"fmt"
	"net/netip"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/manager"
)

func (a *app) vmchannelCommand() *cobra.Command {
	cmd := groupCommand(&cobra.Command{
		Use:   "vmchannel",
		Short: "Add, remove and list a domain's vmchannels",
	})
	cmd.AddCommand(a.vmchannelAddCommand(), a.vmchannelRemoveCommand(), a.vmchannelListCommand())
	return cmd
}

func (a *app) vmchannelAddCommand() *cobra.Command {
	var port uint
	var path, address, proxy string
	var maxConns int
	var sc scopeFlags
	cmd := &cobra.Command{
		Use:   "add NAME --port P --path PATH [--address A] [--live] [--config]",
		Short: "Add a vmchannel: to the running domain (on minivirt's network) and/or its definition",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("port") || path == "" {
				return fmt.Errorf("vmchannel add: --port and --path are required")
			}
			vport, err := domain.Port("vmchannel port", port)
			if err != nil {
				return err
			}
			vc := domain.VMChannel{Port: vport, Path: path, Proxy: proxy, MaxConnections: maxConns}
			if address != "" {
				if err := domain.CheckAddress(address, fmt.Sprint(port)); err != nil {
					return err
				}
				vc.Address = netip.MustParseAddr(address)
			}
			if cmd.Flags().Changed("max-connections") && (maxConns < 1 || maxConns > 65535) {
				return fmt.Errorf("vmchannel port %d max-connections %d: must be 1-65535", port, maxConns)
			}
			scope, err := a.mgr.ScopeFor(args[0], sc.live, sc.config)
			if err != nil {
				return userError(err)
			}
			added, err := a.mgr.AddVMChannel(cmd.Context(), args[0], vc, scope)
			if err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s: vmchannel %s -> %s added%s\n", args[0], added.AddrPort(), added.Path, scopeWords(scope))
			return nil
		},
	}
	sc.add(cmd)
	f := cmd.Flags()
	f.UintVar(&port, "port", 0, "guest TCP port, 1-65535")
	f.StringVar(&path, "path", "", "host Unix socket the guest's connections are relayed to (absolute)")
	f.StringVar(&address, "address", "", "guest-side address in the user network (default 10.0.2.4)")
	f.StringVar(&proxy, "proxy", "", "write a PROXY protocol header on each host connection: v2")
	f.IntVar(&maxConns, "max-connections", 0, fmt.Sprintf("most concurrent guest connections (default %d)", domain.DefaultMaxConnections))
	return cmd
}

func (a *app) vmchannelRemoveCommand() *cobra.Command {
	var port uint
	var address string
	var sc scopeFlags
	cmd := &cobra.Command{
		Use:   "remove NAME --port P [--address A] [--live] [--config]",
		Short: "Remove a vmchannel: from the running domain and/or its definition",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			vport, err := domain.Port("vmchannel port", port)
			if err != nil {
				return fmt.Errorf("%w (give --port)", err)
			}
			var addr netip.Addr
			if address != "" {
				var err error
				if addr, err = netip.ParseAddr(address); err != nil {
					return fmt.Errorf("vmchannel address %q: not an IPv4 address", address)
				}
			}
			scope, err := a.mgr.ScopeFor(args[0], sc.live, sc.config)
			if err != nil {
				return userError(err)
			}
			if _, err := a.mgr.RemoveVMChannel(cmd.Context(), args[0], vport, addr, scope); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s: vmchannel port %d removed%s\n", args[0], port, scopeWords(scope))
			return nil
		},
	}
	sc.add(cmd)
	cmd.Flags().UintVar(&port, "port", 0, "guest TCP port of the vmchannel")
	cmd.Flags().StringVar(&address, "address", "", "guest-side address, when the port is used on several")
	return cmd
}

// scopeFlags are virsh attach-device's --live, --config and --current.
type scopeFlags struct{ live, config, current bool }

func (sc *scopeFlags) add(cmd *cobra.Command) {
	sc.addWith(cmd, "change the running domain (minivirt's own network only)")
}

// addWith adds the flags with liveHelp as --live's help.
func (sc *scopeFlags) addWith(cmd *cobra.Command, liveHelp string) {
	f := cmd.Flags()
	f.BoolVar(&sc.live, "live", false, liveHelp)
	f.BoolVar(&sc.config, "config", false, "change the definition: takes effect at the next start")
	f.BoolVar(&sc.current, "current", false, "the running domain if it runs, else the definition (the default)")
}

// scopeWords says where a change went.
func scopeWords(sc manager.Scope) string {
	switch {
	case sc.Live && sc.Config:
		return " (live and in the definition)"
	case sc.Live:
		return " (live; the definition is unchanged: add --config to keep it)"
	}
	return " (in the definition: takes effect at the next start)"
}

// vmchannelItem is one vmchannel in `vmchannel list -o json` and in
// `status -o json`: its definition, and its counters while the domain runs.
type vmchannelItem = manager.ChannelStatus

// vmchannelItems lists d's vmchannels with the counters of its supervisor,
// when one answered: what runs, live changes included.
func vmchannelItems(d *domain.Domain, live *manager.LiveView) []vmchannelItem {
	if live != nil {
		return append([]vmchannelItem{}, live.VMChannels...)
	}
	items := []vmchannelItem{}
	for _, vc := range d.VMChannels() {
		items = append(items, vmchannelItem{VMChannel: vc})
	}
	return items
}

var networkText = map[string]string{
	domain.NetworkSlirp:    "Network: slirp (QEMU's user network); QEMU spawns a helper per guest connection, which hands it to the supervisor",
	domain.NetworkNetstack: "Network: netstack (minivirt's own, in the supervisor); no process per guest connection",
}

func (a *app) vmchannelListCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "list NAME",
		Short: "List a domain's vmchannels",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			st, err := a.mgr.LiveStatus(cmd.Context(), args[0])
			if err != nil {
				return userError(err)
			}
			d, o := st.Domain, st.Observed
			items := vmchannelItems(d, st.Live)
			if output == "json" {
				return a.printJSON(items)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, " Address\tPort\tPath\tProxy\tMax\tActive\tTotal\tRefused\tIn\tOut")
			for _, it := range items {
				proxy := it.Proxy
				if proxy == "" {
					proxy = "-"
				}
				fmt.Fprintf(tw, " %s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", it.Address, it.Port, it.Path, proxy, it.MaxConnections,
					it.Active, it.Total, it.Refused, it.BytesIn, it.BytesOut)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(items) > 0 {
				network := d.Network()
				backend, _ := d.NetBackend()
				if o.Active() && o.Network != "" {
					// what the running QEMU has, even if redefined since
					network, backend = o.Network, domain.NetBackend(o.NetBackend)
				}
				text := networkText[network]
				if network == domain.NetworkNetstack && backend != "" {
					text = strings.Replace(text, "in the supervisor)", "in the supervisor, on "+string(backend)+")", 1)
				}
				fmt.Fprintln(a.stdout, text)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: table or json")
	return cmd
}
