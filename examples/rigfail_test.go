//go:build rigfail

package examples

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/rig"
)

// TestGuestThatFails is meant to fail: its guest prints an error and never
// sends the expected line. TestFailingGuestShowsConsole runs it and checks
// that the guest's console lands in the test log.
func TestGuestThatFails(t *testing.T) {
	vm := rig.StartT(t, rig.New(tinyGuest("echo this guest is broken; exit 1")))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := vm.WaitConsole(ctx, regexp.MustCompile("^all good$")); err != nil {
		t.Fatal(err)
	}
}
