package main

import "github.com/spf13/cobra"

// examples are the --help examples of the verbs that do not set their own.
var examples = map[string]string{
	"minivirt define":             "  minivirt define demo.xml\n  virt-install --print-xml ... | minivirt define -",
	"minivirt undefine":           "  minivirt undefine demo",
	"minivirt list":               "  minivirt list\n  minivirt list --all\n  minivirt list --name --state-running\n  minivirt list --all -o json",
	"minivirt start":              "  minivirt start demo\n  minivirt start --paused demo\n  minivirt start --autostart",
	"minivirt shutdown":           "  minivirt shutdown demo\n  minivirt shutdown demo --timeout 2m\n  minivirt shutdown demo --mode agent",
	"minivirt destroy":            "  minivirt destroy demo",
	"minivirt stop":               "  minivirt stop demo --timeout 30s",
	"minivirt reboot":             "  minivirt reboot demo\n  minivirt reboot demo --mode agent",
	"minivirt suspend":            "  minivirt suspend demo",
	"minivirt resume":             "  minivirt resume demo",
	"minivirt status":             "  minivirt status demo\n  minivirt status demo -o json",
	"minivirt log":                "  minivirt log demo\n  minivirt log -f demo",
	"minivirt console":            "  minivirt console demo\n  minivirt console demo --force",
	"minivirt restore":            "  minivirt restore /var/tmp/demo.save\n  minivirt restore /var/tmp/demo.save --paused",
	"minivirt managedsave":        "  minivirt managedsave demo\n  minivirt start demo   # goes on from the managed save",
	"minivirt managedsave-remove": "  minivirt managedsave-remove demo",
	"minivirt snapshot-create-as": "  minivirt snapshot-create-as demo before-upgrade\n  minivirt snapshot-create-as demo disks --disk-only",
	"minivirt snapshot-list":      "  minivirt snapshot-list demo\n  minivirt snapshot-list demo -o json",
	"minivirt snapshot-revert":    "  minivirt snapshot-revert demo before-upgrade",
	"minivirt snapshot-delete":    "  minivirt snapshot-delete demo before-upgrade",
	"minivirt snapshot-current":   "  minivirt snapshot-current demo --name",
	"minivirt change-media":       "  minivirt change-media demo sdb /srv/debian.iso\n  minivirt change-media demo sdb --eject",
	"minivirt qmp":                `  minivirt qmp demo '{"execute":"query-status"}'`,
	"minivirt run":                "  minivirt run --rm --timeout 2m --console guest.xml",
	"minivirt vmchannel":          "  minivirt vmchannel list demo",
	"minivirt vmchannel add":      "  minivirt vmchannel add demo --port 600 --path /run/svc.sock\n  minivirt vmchannel add demo --port 601 --path /run/b.sock --address 10.0.2.5 --proxy v2",
	"minivirt vmchannel remove":   "  minivirt vmchannel remove demo --port 600",
	"minivirt vmchannel list":     "  minivirt vmchannel list demo\n  minivirt vmchannel list demo -o json",
	"minivirt network":            "  minivirt network serve demo",
	"minivirt port":               "  minivirt port add demo --guest-port 22 --listen 2222\n  minivirt port list demo",
	"minivirt completion":         "  minivirt completion bash > /etc/bash_completion.d/minivirt",
}

// addExamples gives every command without an example its own.
func addExamples(c *cobra.Command) {
	if c.Example == "" {
		c.Example = examples[c.CommandPath()]
	}
	for _, sub := range c.Commands() {
		addExamples(sub)
	}
}
