package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/manager"
)

func (a *app) portCommand() *cobra.Command {
	cmd := groupCommand(&cobra.Command{
		Use:   "port",
		Short: "Forward host connections into the guest: a TCP port on the host, a Unix socket, or stdin and stdout",
		Long: `port forwards connections from the host to a TCP port of the guest, one guest
connection for every host connection, with end-of-stream both ways. The host
side is a TCP address (127.0.0.1 unless one is given) or, on minivirt's own
network, a Unix socket: then nothing listens on TCP at all. port connect
carries one connection on its stdin and stdout, with nothing listening on the
host (ssh's ProxyCommand).`,
	})
	cmd.AddCommand(a.portAddCommand(), a.portRemoveCommand(), a.portListCommand(), a.portConnectCommand())
	return cmd
}

func (a *app) portAddCommand() *cobra.Command {
	var guestPort uint
	var listen, path string
	var maxConns int
	var sc scopeFlags
	cmd := &cobra.Command{
		Use:   "add NAME --guest-port P (--listen [ADDR:]PORT | --path SOCKET) [--live] [--config]",
		Short: "Forward a host TCP port or Unix socket to a guest port",
		Example: `  minivirt port add demo --guest-port 22 --listen 2222
  minivirt port add demo --guest-port 80 --path /run/demo-web.sock --live --config`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			gport, err := domain.Port("port add: --guest-port", guestPort)
			if err != nil {
				return err
			}
			if (listen == "") == (path == "") {
				return fmt.Errorf("port add: give --listen [ADDR:]PORT (TCP on the host) or --path SOCKET, one of them")
			}
			f := domain.Forward{GuestPort: gport, Path: path, MaxConnections: maxConns}
			if listen != "" {
				ap, err := domain.ParseListen(listen)
				if err != nil {
					return err
				}
				f.Listen = ap
			}
			scope, err := a.mgr.ScopeFor(args[0], sc.live, sc.config)
			if err != nil {
				return userError(err)
			}
			if err := a.mgr.AddForward(cmd.Context(), args[0], f, scope); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s: %s -> guest port %d added%s\n", args[0], f.Name(), guestPort, scopeWords(scope))
			return nil
		},
	}
	sc.add(cmd)
	fl := cmd.Flags()
	fl.UintVar(&guestPort, "guest-port", 0, "the guest's TCP port")
	fl.StringVar(&listen, "listen", "", "host TCP address: PORT (on 127.0.0.1) or ADDR:PORT")
	fl.StringVar(&path, "path", "", "host Unix socket (minivirt's own network only)")
	fl.IntVar(&maxConns, "max-connections", 0, fmt.Sprintf("most concurrent connections (default %d)", domain.DefaultMaxConnections))
	return cmd
}

func (a *app) portRemoveCommand() *cobra.Command {
	var guestPort uint
	var host string
	var sc scopeFlags
	cmd := &cobra.Command{
		Use:     "remove NAME --guest-port P [--host [ADDR:]PORT|SOCKET] [--live] [--config]",
		Short:   "Remove a forward",
		Example: "  minivirt port remove demo --guest-port 22",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			gport, err := domain.Port("port remove: --guest-port", guestPort)
			if err != nil {
				return err
			}
			scope, err := a.mgr.ScopeFor(args[0], sc.live, sc.config)
			if err != nil {
				return userError(err)
			}
			if err := a.mgr.RemoveForward(cmd.Context(), args[0], gport, host, scope); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s: forward to guest port %d removed%s\n", args[0], guestPort, scopeWords(scope))
			return nil
		},
	}
	sc.add(cmd)
	cmd.Flags().UintVar(&guestPort, "guest-port", 0, "the guest's TCP port")
	cmd.Flags().StringVar(&host, "host", "", "the host side, when several forwards go to the port")
	return cmd
}

// forwardItem is one row of `port list -o json`.
type forwardItem struct {
	Host      string `json:"host"`
	GuestPort uint16 `json:"guest_port"`
	Max       int    `json:"max_connections"`
	Active    uint64 `json:"active"`
	Total     uint64 `json:"total"`
	Refused   uint64 `json:"refused"`
	BytesIn   uint64 `json:"bytes_in"`
	BytesOut  uint64 `json:"bytes_out"`
	Live      bool   `json:"live"` // served by the running domain
}

func (a *app) portListCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:     "list NAME",
		Short:   "List a domain's forwards, with counters while it runs on minivirt's network (`port connect`'s too)",
		Example: "  minivirt port list demo\n  minivirt port list demo -o json",
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			st, err := a.mgr.LiveStatus(cmd.Context(), args[0])
			if err != nil {
				return userError(err)
			}
			items := forwardItems(st)
			if output == "json" {
				return a.printJSON(items)
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(tw, " Host\tGuest port\tMax\tActive\tTotal\tRefused\tIn\tOut")
			for _, it := range items {
				fmt.Fprintf(tw, " %s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", it.Host, it.GuestPort, it.Max, it.Active, it.Total, it.Refused, it.BytesIn, it.BytesOut)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: table or json")
	return cmd
}

// connectHost is the Host of `port list`'s rows that count `port connect`.
const connectHost = "(port connect)"

// forwardItems lists the forwards the running domain serves (with their
// counters), then those of the definition it does not, then the counters
// of `port connect` by guest port.
func forwardItems(st manager.Status) []forwardItem {
	items := []forwardItem{}
	live := map[string]bool{}
	if st.Live != nil {
		for _, f := range st.Live.Forwards {
			live[f.Forward.Name()] = true
			items = append(items, forwardItem{Host: f.Forward.Name(), GuestPort: f.Forward.GuestPort, Max: f.Forward.MaxConnections,
				Active: f.Active, Total: f.Total, Refused: f.Refused, BytesIn: f.BytesIn, BytesOut: f.BytesOut, Live: true})
		}
	}
	for _, f := range st.Domain.Forwards() {
		if !live[f.Name()] {
			items = append(items, forwardItem{Host: f.Name(), GuestPort: f.GuestPort, Max: f.MaxConnections})
		}
	}
	if st.Live != nil {
		for _, c := range st.Live.Connects {
			items = append(items, forwardItem{Host: connectHost, GuestPort: c.GuestPort, Max: c.MaxConnections,
				Active: c.Active, Total: c.Total, Refused: c.Refused, BytesIn: c.BytesIn, BytesOut: c.BytesOut, Live: true})
		}
	}
	return items
}
