package store

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/pkg/domain"
)

func parse(t *testing.T, name, uuid string) *domain.Domain {
	t.Helper()
	u := ""
	if uuid != "" {
		u = "<uuid>" + uuid + "</uuid>"
	}
	d, err := domain.Parse(strings.NewReader(`<domain type='qemu'><name>` + name + `</name>` + u + `<memory>1024</memory><os><kernel>/k</kernel></os></domain>`))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDefineRules(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const u1 = "11111111-1111-4111-8111-111111111111"
	if created, err := s.Define(parse(t, "a", u1)); err != nil || !created {
		t.Fatalf("first define: %v, %v", created, err)
	}
	again := parse(t, "a", "")
	if created, err := s.Define(again); err != nil || created || again.UUID != u1 {
		t.Fatalf("redefine without uuid: created %v, uuid %s, %v", created, again.UUID, err)
	}
	if _, err := s.Define(parse(t, "a", "22222222-2222-4222-8222-222222222222")); err == nil {
		t.Error("redefine with another uuid succeeded")
	}
	if _, err := s.Define(parse(t, "b", u1)); err == nil || !strings.Contains(err.Error(), "already used by domain a") {
		t.Errorf("a second domain with a's uuid: %v", err)
	}
	if err := s.Undefine("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Define(parse(t, "b", u1)); err != nil {
		t.Errorf("the uuid of an undefined domain is free again: %v", err)
	}
	if _, err := s.Get("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of an undefined domain: %v", err)
	}
}

func TestRuntime(t *testing.T) {
	s, err := Open(t.TempDir(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.SetRuntime("ghost", Runtime{State: StateRunning}); !errors.Is(err, ErrNotFound) {
		t.Errorf("runtime of an undefined domain: %v", err)
	}
	s.Define(parse(t, "r", ""))
	if rt, err := s.GetRuntime("r"); err != nil || rt.State != StateShutoff || rt.Active() {
		t.Errorf("a domain never started: %+v, %v", rt, err)
	}
	s.SetRuntime("r", Runtime{State: StatePaused, Reason: "user"})
	err = s.UpdateRuntime("r", func(rt *Runtime) error {
		if rt.State != StatePaused {
			t.Errorf("UpdateRuntime saw %+v", rt)
		}
		rt.State = StateRunning
		return nil
	})
	if rt, _ := s.GetRuntime("r"); err != nil || rt.State != StateRunning || rt.Reason != "user" || rt.Since.IsZero() {
		t.Errorf("after UpdateRuntime: %+v, %v", rt, err)
	}
	if list, err := s.List(); err != nil || len(list) != 1 || list[0].Runtime.State != StateRunning {
		t.Errorf("List: %+v, %v", list, err)
	}
}
