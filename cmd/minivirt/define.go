package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/domain"
)

func (a *app) defineCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "define FILE|-",
		Short: "Define a domain from domain XML (redefining keeps its uuid)",
		Args:  exactArgs("FILE|-"),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := readDomain(args[0], a.stdin)
			if err != nil {
				return err
			}
			for _, w := range d.Warnings() {
				a.warn("domain %s: %s", d.Name, w)
			}
			_, running, err := a.mgr.Define(d)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Domain %s defined\n", d.Name)
			if running != "" {
				a.warn("domain %s is %s: the new definition takes effect at its next start", d.Name, running)
			}
			return nil
		},
	}
}

// readDomain reads, normalises and validates domain XML from a file or "-".
func readDomain(path string, stdin io.Reader) (*domain.Domain, error) {
	r, name := stdin, "standard input"
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("define: %w", unwrapPathError(err))
		}
		defer f.Close()
		r, name = f, path
	}
	d, err := domain.Parse(r)
	if err == nil {
		err = d.Validate()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return d, nil
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

func (a *app) undefineCommand() *cobra.Command {
	var managedSave bool
	cmd := &cobra.Command{
		Use:   "undefine NAME",
		Short: "Remove a domain's definition (refused while it runs)",
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if managedSave && a.mgr.HasManagedSave(name) {
				if err := a.mgr.ManagedSaveRemove(name); err != nil {
					return userError(err)
				}
			}
			if err := a.mgr.Undefine(name); err != nil {
				return userError(err)
			}
			fmt.Fprintf(a.stdout, "Domain %s has been undefined\n", name)
			return nil
		},
	}
	cmd.Flags().BoolVar(&managedSave, "managed-save", false, "remove the domain's managed save image too")
	return cmd
}

func (a *app) dumpxmlCommand() *cobra.Command {
	var libvirt bool
	var socket string
	cmd := &cobra.Command{
		Use:   "dumpxml NAME",
		Short: "Write a domain's XML (minivirt's form, or for a libvirtd with --libvirt)",
		Long: `dumpxml writes the domain's definition as minivirt stores it.

With --libvirt it writes the domain for a real libvirtd: its vmchannels are
carried by a virtio NIC (through <qemu:commandline>) whose network
` + "`minivirt network serve NAME`" + ` runs at --socket. Start that first. A domain that
cannot be moved with working vmchannels is refused, saying why.`,
		Example: `  minivirt dumpxml demo
  minivirt dumpxml demo --libvirt > demo-libvirt.xml && virsh define demo-libvirt.xml`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out []byte
			var err error
			if libvirt {
				out, err = a.mgr.LibvirtXML(args[0], socket)
			} else {
				var d *domain.Domain
				if d, err = a.mgr.Get(args[0]); err == nil {
					out, err = d.XML()
				}
			}
			if err != nil {
				return userError(err)
			}
			_, err = a.stdout.Write(out)
			return err
		},
	}
	// virsh's flags that ask for the persistent definition or more of it:
	// minivirt's dumpxml is always the whole persistent definition.
	for _, f := range []string{"inactive", "security-info", "migratable"} {
		cmd.Flags().Bool(f, false, "accepted as virsh's: minivirt writes the whole persistent definition either way")
	}
	cmd.Flags().BoolVar(&libvirt, "libvirt", false, "write the domain for a real libvirtd, vmchannels served by `minivirt network serve`")
	cmd.Flags().StringVar(&socket, "socket", "", "with --libvirt: the socket `minivirt network serve` listens on (default beside the run directory)")
	return cmd
}

// exactArgs is cobra.ExactArgs with a message in the user's terms.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(names) == 0 && len(args) > 0:
			return fmt.Errorf("%s takes no arguments; got %q; see `%s --help`", cmd.Name(), strings.Join(args, " "), cmd.CommandPath())
		case len(args) < len(names):
			return fmt.Errorf("%s: give %s; see `%s --help`", cmd.Name(), strings.Join(names[len(args):], " "), cmd.CommandPath())
		case len(args) > len(names):
			return fmt.Errorf("%s takes %s; %q is one too many; see `%s --help`", cmd.Name(), strings.Join(names, " "), args[len(names)], cmd.CommandPath())
		}
		for i, a := range args {
			if a == "" {
				return fmt.Errorf("%s: %s is empty", cmd.Name(), names[i])
			}
		}
		return nil
	}
}
