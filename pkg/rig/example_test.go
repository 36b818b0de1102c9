package rig_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
	"github.com/minivirt/minivirt/pkg/rig"
)

var guestDir string

// TestMain provides what the example needs: the minivirt binary (the
// vmchannel helper) and the tiny guest.
func TestMain(m *testing.M) {
	dir, cleanup, err := testenv.PrepareRig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rig:", err)
		os.Exit(1)
	}
	guestDir = dir
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// Example boots minivirt's tiny guest, answers the request it sends over
// a vmchannel, and waits for the guest to power off.
func Example() {
	b := rig.New(rig.Guest{
		Kernel:  filepath.Join(guestDir, "vmlinuz"),
		Initrd:  filepath.Join(guestDir, "initrd.gz"),
		Cmdline: "console=ttyS0 quiet " + rig.Script("minivirt-guest request "+rig.ChannelAddr(600)+" ping"),
	})
	l, err := b.Listen(600) // one Accept per guest connection to 10.0.2.4:600
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vm, err := b.Start(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer vm.Close()

	conn, err := rig.Accept(ctx, l)
	if err != nil {
		fmt.Println(err)
		return
	}
	req, _ := io.ReadAll(conn) // the guest half-closes after its request
	fmt.Fprintf(conn, "pong to %s", req)
	conn.Close()

	line, _ := vm.WaitConsole(ctx, regexp.MustCompile(`^reply: `))
	fmt.Println(line)
	end, _ := vm.Wait(ctx)
	fmt.Println(end.State, end.Reason)
	// Output:
	// reply: pong to ping
	// shut off shutdown
}
