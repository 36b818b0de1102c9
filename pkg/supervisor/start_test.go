package supervisor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
)

// A failing step undoes every step before it, in reverse, and none after;
// the error names the step.
func TestRunStepsUnwinds(t *testing.T) {
	names := []string{"a", "b", "c", "d"}
	for fail := range names {
		var log []string
		var steps []step
		for i, name := range names {
			steps = append(steps, step{
				name: name,
				do: func(context.Context) error {
					log = append(log, "do "+name)
					if i == fail {
						return fmt.Errorf("%s broke", name)
					}
					return nil
				},
				undo: func() { log = append(log, "undo "+name) },
			})
		}
		steps[1].undo = nil // a step with nothing to take back
		err := runSteps(context.Background(), steps)
		var se *StepError
		if !errors.As(err, &se) || se.Step != names[fail] || err.Error() != names[fail]+" broke" {
			t.Errorf("step %s failing: error %v", names[fail], err)
		}
		var want []string
		for i := 0; i <= fail; i++ {
			want = append(want, "do "+names[i])
		}
		for i := fail - 1; i >= 0; i-- {
			if i != 1 {
				want = append(want, "undo "+names[i])
			}
		}
		if !slices.Equal(log, want) {
			t.Errorf("step %s failing:\n got %q\nwant %q", names[fail], log, want)
		}
	}
	var ran int
	ok := []step{{"x", func(context.Context) error { ran++; return nil }, func() { t.Error("undo after success") }}}
	if err := runSteps(context.Background(), ok); err != nil || ran != 1 {
		t.Errorf("all steps passing: %v, ran %d", err, ran)
	}
}

// The start's steps are the ones the package documents, in that order.
func TestStartSteps(t *testing.T) {
	var got []string
	for _, st := range (&supervisor{}).steps() {
		got = append(got, st.name)
	}
	want := []string{"plan", "look for an unrecorded QEMU", "claim the runtime directory", "claim the record",
		"make QEMU's sockets", "serve the control socket", "serve the guest's network", "serve the console", "bind the shares' sockets", "start QEMU",
		"start the shares' virtiofsd", "connect QMP",
		"record the running state"}
	if !slices.Equal(got, want) {
		t.Errorf("steps %q; want %q", got, want)
	}
}
