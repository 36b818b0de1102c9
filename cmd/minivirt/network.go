package main

import (
	"log"
	"os/signal"
	"os/user"
	"syscall"

	"github.com/spf13/cobra"
)

func (a *app) networkCommand() *cobra.Command {
	cmd := groupCommand(&cobra.Command{
		Use:   "network",
		Short: "minivirt's own network for a domain that libvirt runs",
	})
	cmd.AddCommand(a.networkServeCommand())
	return cmd
}

func (a *app) networkServeCommand() *cobra.Command {
	var socket, qemuUser string
	cmd := &cobra.Command{
		Use:   "serve NAME",
		Short: "Serve the vmchannels of a domain exported with `dumpxml --libvirt`, until stopped",
		Long: `network serve runs minivirt's own network for a domain that a libvirtd runs:
it listens on --socket for the QEMU of the domain exported with
` + "`minivirt dumpxml NAME --libvirt`" + `, and relays each guest connection to a
vmchannel to its own connection on the host socket. Start it before the domain;
it serves the domain again after a restart. It runs until interrupted.`,
		Example: `  minivirt network serve demo &
  minivirt dumpxml demo --libvirt > demo.xml
  virsh define demo.xml && virsh start demo`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("qemu-user") {
				if _, err := user.Lookup("libvirt-qemu"); err == nil {
					qemuUser = "libvirt-qemu"
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			logger := log.New(a.stderr, "minivirt: network "+args[0]+": ", log.LstdFlags)
			return a.mgr.ServeNetwork(ctx, args[0], socket, qemuUser, logger)
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "the socket to listen on (default: as `dumpxml --libvirt` names it)")
	cmd.Flags().StringVar(&qemuUser, "qemu-user", "", "the user libvirt runs QEMU as, given the socket (default libvirt-qemu when it exists)")
	return cmd
}
