package main

import (
	"bytes"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// escapeByte is Ctrl-], virsh's console escape.
const escapeByte = 0x1d

func (a *app) consoleCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "console NAME",
		Short: "Attach to a domain's serial console; Ctrl-] leaves",
		Long: `console attaches to a running domain's serial console. Several consoles can
be attached at once: each shows what the guest writes from then on, and one
holds the input: the first attached, or once it has left, the first to type.
--force takes the input over; the console that held it goes on showing the
output. The console log keeps everything (minivirt log NAME).`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			conn, input, err := a.mgr.DialConsole(cmd.Context(), name, force)
			if err != nil {
				return userError(err)
			}
			defer conn.Close()
			if f, ok := a.stdin.(*os.File); ok {
				if restore, err := rawTerminal(int(f.Fd())); err == nil {
					defer restore()
				}
			}
			fmt.Fprintf(a.stderr, "Connected to domain %s\r\nEscape character is ^] (Ctrl + ])\r\n", name)
			if !input {
				fmt.Fprint(a.stderr, "Another console holds the input: this one shows the output only (--force takes the input over)\r\n")
			}
			out := make(chan error, 1)
			go func() {
				_, err := io.Copy(a.stdout, conn)
				out <- err
			}()
			in := make(chan error, 1)
			go func() { in <- copyUntilEscape(conn, a.stdin) }()
			select {
			case <-in: // Ctrl-] or end of input
			case <-out: // the domain stopped
			}
			fmt.Fprint(a.stderr, "\r\n")
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "take the input over from the console that holds it")
	return cmd
}

// copyUntilEscape copies src to dst until Ctrl-] or the end of src.
func copyUntilEscape(dst io.Writer, src io.Reader) error {
	buf := make([]byte, 1024)
	for {
		n, err := src.Read(buf)
		if i := bytes.IndexByte(buf[:n], escapeByte); i >= 0 {
			_, werr := dst.Write(buf[:i])
			return werr
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
	}
}

// rawTerminal puts the terminal fd into raw mode and returns the restore.
func rawTerminal(fd int) (func(), error) {
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, err
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}
