package manager

import (
	"github.com/minivirt/minivirt/pkg/launcher"
	"github.com/minivirt/minivirt/pkg/vmchannel"
)

// HelperCommand is the hidden subcommand of the minivirt binary
// (SuperviseOptions.Self) that QEMU runs for each guest connection of a
// vmchannel on QEMU's user network. A binary that serves as Self must, given
// it as its first argument, call RunHelper with the arguments after it
// before anything that could write to stdout or stderr.
const HelperCommand = launcher.HelperCommand

// RunHelper is the vmchannel helper, vmchannel.RunHelper: args are the
// words after HelperCommand, and it returns the exit status. It never
// writes to stdout or stderr, which are the guest's connection.
func RunHelper(args []string) int { return vmchannel.RunHelper(args) }
