package proc

import (
	"os/exec"
	"testing"
)

func TestIdentity(t *testing.T) {
	self, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(self) {
		t.Fatalf("Alive(%+v) = false for the calling process", self)
	}
	tests := []struct {
		name string
		id   ID
	}{
		{"zero", ID{}},
		{"other start time (a reused pid)", ID{PID: self.PID, StartTime: self.StartTime + 1, BootID: self.BootID}},
		{"other boot", ID{PID: self.PID, StartTime: self.StartTime, BootID: "00000000-0000-0000-0000-000000000000"}},
	}
	for _, tt := range tests {
		if Alive(tt.id) {
			t.Errorf("%s: Alive(%+v) = true", tt.name, tt.id)
		}
	}
}

func TestExitedProcess(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	id, err := Lookup(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if !Alive(id) {
		t.Fatal("a running child is not alive")
	}
	cmd.Process.Kill()
	// Before it is reaped the child is a zombie: gone all the same.
	for i := 0; i < 100 && Alive(id); i++ {
		exec.Command("true").Run()
	}
	if Alive(id) {
		t.Error("a killed child is still alive")
	}
	cmd.Wait()
	if Alive(id) {
		t.Error("a reaped child is still alive")
	}
}
