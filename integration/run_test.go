package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunExitStatus: `minivirt run` says how the guest ended.
func TestRunExitStatus(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	empty := filepath.Join(h.top, "empty-kernel")
	os.WriteFile(empty, nil, 0o644)
	tests := []struct {
		name  string
		g     guest
		args  []string
		code  int
		say   string
		kernl string
	}{
		{"clean power-off", guest{name: "r0", cmdline: "minivirt.poweroff"}, nil, 0, "", ""},
		{"crash", guest{name: "r2", script: "echo c > /proc/sysrq-trigger"}, nil, 2, "ended shut off (crashed: guest panicked)", ""},
		{"timeout", guest{name: "r124"}, []string{"--timeout", "3s"}, 124, "did not power off within 3s", ""},
		{"failed start", guest{name: "r1"}, nil, 1, "could not load kernel", empty},
	}
	for _, tt := range tests {
		xml := tt.g.xml()
		if tt.kernl != "" {
			xml = strings.Replace(xml, filepath.Join(guestDir, "vmlinuz"), tt.kernl, 1)
		}
		_, errs, code := h.Run(xml, append([]string{"run", "--rm"}, append(tt.args, "-")...)...)
		if code != tt.code || !strings.Contains(errs, tt.say) {
			t.Errorf("%s: exit %d, stderr %q; want exit %d saying %q", tt.name, code, errs, tt.code, tt.say)
		}
	}
	if names := h.names(); len(names) != 0 {
		t.Errorf("run --rm left definitions: %v", names)
	}
	if left := h.processes(); len(left) != 0 {
		t.Errorf("run left processes: %v", left)
	}
}
