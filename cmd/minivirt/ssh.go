package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/minivirt/minivirt/pkg/domain"
	"github.com/minivirt/minivirt/pkg/manager"
)

// sshPort is the guest port ssh and ssh-config reach.
const sshPort = 22

func (a *app) portConnectCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "connect NAME GUESTPORT",
		Short: "Connect stdin and stdout to a guest TCP port, opening no port on the host (for ssh's ProxyCommand)",
		Long: `port connect opens one connection to the guest's TCP port through the domain's
supervisor, on minivirt's own network, and copies stdin to it and it to stdout;
nothing listens on the host. End of input half-closes the connection towards the
guest, which can still answer; the guest's close ends the output and the
command. Nothing but the guest's bytes is written to stdout; a failure (such as
nothing listening on the port) is one line on stderr and a non-zero exit.

It is what ` + "`minivirt ssh`" + ` and ` + "`minivirt ssh-config`" + ` give ssh as its ProxyCommand.`,
		Example: `  ssh -o ProxyCommand='minivirt port connect demo 22' user@demo
  printf 'GET / HTTP/1.0\r\n\r\n' | minivirt port connect demo 80`,
		Args: exactArgs("NAME", "GUESTPORT"),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.ParseUint(args[1], 10, 16)
			if err != nil {
				return fmt.Errorf("port connect: guest port %q: must be 1-65535", args[1])
			}
			port, err := domain.Port("port connect: guest port", uint(n))
			if err != nil {
				return err
			}
			conn, err := a.mgr.ConnectGuest(cmd.Context(), args[0], port)
			if err != nil {
				return userError(err)
			}
			defer conn.Close()
			return relayStdio(conn, a.stdin, a.stdout)
		},
	}
}

// relayStdio copies in to conn and conn to out until conn's end of stream
// (the guest closed): in's end half-closes conn (conn has CloseWrite, as
// manager.ConnectGuest promises), and the guest may answer after it. A
// failure to send closes conn, which ends the copy to out.
func relayStdio(conn net.Conn, in io.Reader, out io.Writer) error {
	sent := make(chan error, 1)
	go func() {
		_, err := io.Copy(conn, in)
		if err == nil {
			err = conn.(interface{ CloseWrite() error }).CloseWrite()
		}
		if err != nil {
			conn.Close()
		}
		sent <- err
	}()
	_, err := io.Copy(out, conn)
	if err != nil {
		select {
		case serr := <-sent:
			if serr != nil {
				return fmt.Errorf("sending to the guest: %w", serr)
			}
		default:
		}
		return fmt.Errorf("receiving from the guest: %w", err)
	}
	return nil
}

func (a *app) sshCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh NAME [-- COMMAND...]",
		Short: "Log in to a domain's guest with ssh, through `port connect` (no host port)",
		Long: `ssh runs the system's ssh as the guest's user that ` + "`minivirt create`" + ` made, with
the key it made, checking the guest's host key against the one it recorded
(StrictHostKeyChecking yes), and reaching port 22 through ` + "`minivirt port connect`" + `:
nothing listens on the host. A COMMAND after -- runs in the guest instead of a
login shell; ssh's exit status is the command's.

A domain that ` + "`minivirt create`" + ` did not make has no user, key or host key recorded:
` + "`minivirt ssh-config NAME`" + ` prints a block for ssh_config to fill in with your own.`,
		Example: `  minivirt ssh demo
  minivirt ssh demo -- uname -a`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch dash := cmd.ArgsLenAtDash(); {
			case len(args) == 0 || dash == 0:
				return exactArgs("NAME")(cmd, nil)
			case dash == -1 && len(args) > 1:
				return fmt.Errorf("ssh: give the guest's command after --, as in `minivirt ssh %s -- %s`", args[0], strings.Join(args[1:], " "))
			case dash > 1:
				return exactArgs("NAME")(cmd, args[:dash])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			acc, err := a.mgr.Access(name)
			if errors.Is(err, manager.ErrNoAccess) {
				return fmt.Errorf("%w; `minivirt ssh-config %s` prints an ssh_config block to complete with your own user and key, or give ssh `minivirt port connect %s %d` as its ProxyCommand", err, name, name, sshPort)
			}
			if err != nil {
				return userError(err)
			}
			for _, f := range []string{acc.IdentityFile, acc.KnownHostsFile} {
				if _, err := os.Stat(f); err != nil {
					return fmt.Errorf("ssh %s: the login `minivirt create` recorded: %w", name, err)
				}
			}
			argv, err := a.sshArgv(name, acc, args[1:])
			if err != nil {
				return err
			}
			path, err := exec.LookPath("ssh")
			if err != nil {
				return fmt.Errorf("ssh %s: %w; install OpenSSH's client (Debian: apt-get install openssh-client)", name, err)
			}
			run := a.execSSH
			if run == nil {
				run = func(path string, argv []string) error { return syscall.Exec(path, argv, os.Environ()) }
			}
			if err := run(path, argv); err != nil {
				return fmt.Errorf("ssh %s: running %s: %w", name, path, err)
			}
			return nil
		},
	}
}

// sshArgv is the argv `minivirt ssh` runs ssh with: the domain's login,
// port connect as the ProxyCommand, and the guest's command (none: a login
// shell) after the host.
func (a *app) sshArgv(name string, acc manager.Access, command []string) ([]string, error) {
	proxy, err := a.proxyCommand(name)
	if err != nil {
		return nil, err
	}
	argv := []string{"ssh",
		"-o", "ProxyCommand=" + proxy,
		"-o", "UserKnownHostsFile=" + configQuote(acc.KnownHostsFile),
		"-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=" + name,
		"-o", "IdentitiesOnly=yes",
		// Not -i: ssh checks that file before it expands "%%".
		"-o", "IdentityFile=" + configQuote(acc.IdentityFile),
		"-l", acc.User,
		"--", name}
	return append(argv, command...), nil
}

func (a *app) sshConfigCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh-config NAME",
		Short: "Print an ssh_config block that reaches a domain's guest through `port connect`",
		Long: `ssh-config prints a Host block for ssh_config: with it, ssh, scp, sftp, rsync and
editors reach the guest's port 22 by the domain's name, through ` + "`minivirt port connect`" + `
(nothing listens on the host), as the user, key and known host key that
` + "`minivirt create`" + ` recorded. Append it to ~/.ssh/config, or give it with -F.

For a domain that ` + "`minivirt create`" + ` did not make, the block has the ProxyCommand and the
host key alias only: add User and IdentityFile for its guest; ssh then keeps its
host key in your own known_hosts under the domain's name.`,
		Example: `  minivirt ssh-config demo >> ~/.ssh/config && ssh demo
  ssh -F <(minivirt ssh-config demo) demo
  rsync -e 'ssh -F /path/to/demo.ssh-config' -a src/ demo:src/`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			acc, err := a.mgr.Access(name)
			known := err == nil
			if err != nil && !errors.Is(err, manager.ErrNoAccess) {
				return userError(err)
			}
			proxy, err := a.proxyCommand(name)
			if err != nil {
				return err
			}
			var b strings.Builder
			if !known {
				fmt.Fprintf(&b, "# minivirt has no login recorded for %s (`minivirt create` did not make it):\n# add User and IdentityFile for its guest.\n", name)
			}
			fmt.Fprintf(&b, "Host %s\n  HostName %s\n  HostKeyAlias %s\n", name, name, name)
			if known {
				fmt.Fprintf(&b, "  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n",
					acc.User, configQuote(acc.IdentityFile), configQuote(acc.KnownHostsFile))
			}
			fmt.Fprintf(&b, "  ProxyCommand %s\n", proxy)
			_, err = io.WriteString(a.stdout, b.String())
			return err
		},
	}
}

// proxyCommand is ssh's ProxyCommand for the domain's port 22: this
// binary's `port connect` with this command's directories, each word
// quoted for the shell that ssh runs it with, and "%" doubled for ssh's
// own expansion.
func (a *app) proxyCommand(name string) (string, error) {
	words := []string{shellQuote(a.self), "--state-dir", shellQuote(a.stateDir), "--run-dir", shellQuote(a.runDir),
		"port", "connect", name, strconv.Itoa(sshPort)}
	cmd := sshTokens(strings.Join(words, " "))
	if strings.ContainsFunc(cmd, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", fmt.Errorf("ssh's ProxyCommand would hold a control character (in %q, %q or %q), which ssh_config cannot carry", a.self, a.stateDir, a.runDir)
	}
	return cmd, nil
}

// shellQuote quotes s as one word for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// configQuote quotes a path for an ssh_config value (the path holds no
// double quote or backslash: manager.Access.Check refuses them), with "%"
// doubled.
func configQuote(path string) string { return `"` + sshTokens(path) + `"` }

// sshTokens doubles "%", which ssh would otherwise expand (%h, %p, ...).
func sshTokens(s string) string { return strings.ReplaceAll(s, "%", "%%") }
