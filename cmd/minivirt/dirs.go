package main

import (
	"fmt"
	"path/filepath"
)

type dirs struct{ state, run string }

// resolveDirs applies design.md's rules: flag, else environment, else the
// default for root or for another user; a user without XDG_RUNTIME_DIR gets
// a run directory inside the state directory.
func resolveDirs(stateFlag, runFlag string, getenv func(string) string, uid int) (dirs, error) {
	d := dirs{state: stateFlag, run: runFlag}
	if d.state == "" {
		d.state = getenv("MINIVIRT_STATE_DIR")
	}
	if d.state == "" {
		switch {
		case uid == 0:
			d.state = "/var/lib/minivirt"
		case getenv("XDG_DATA_HOME") != "":
			d.state = filepath.Join(getenv("XDG_DATA_HOME"), "minivirt")
		case getenv("HOME") != "":
			d.state = filepath.Join(getenv("HOME"), ".local", "share", "minivirt")
		default:
			return d, fmt.Errorf("state directory: HOME is not set; give --state-dir or MINIVIRT_STATE_DIR")
		}
	}
	if d.run == "" {
		d.run = getenv("MINIVIRT_RUN_DIR")
	}
	if d.run == "" {
		switch {
		case uid == 0:
			d.run = "/run/minivirt"
		case getenv("XDG_RUNTIME_DIR") != "":
			d.run = filepath.Join(getenv("XDG_RUNTIME_DIR"), "minivirt")
		default:
			// Not a predictable name under /tmp, which another local user
			// could create first and so own every socket's parent.
			d.run = filepath.Join(d.state, "run")
		}
	}
	var err error
	if d.state, err = filepath.Abs(d.state); err != nil {
		return d, err
	}
	if d.run, err = filepath.Abs(d.run); err != nil {
		return d, err
	}
	return d, nil
}
