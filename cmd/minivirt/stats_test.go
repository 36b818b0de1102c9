package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// domstats through the real binary: a running fake-QEMU domain's key=value
// lines and JSON, a defined one that does not run (state.state=5 only),
// and the flags refused.
func TestDomStats(t *testing.T) {
	e := newEnv(t)
	e.OK(fakeDomainXML(t, "fake", "guest", `<vmchannels network='netstack'/><memballoon model='virtio'/>`), "define", "-")
	e.OK(domainXML("off", ""), "define", "-")
	e.OK("", "start", "fake")
	t.Cleanup(func() { e.Run("", "destroy", "fake") })

	out := e.OK("", "domstats", "fake", "off")
	want := `(?s)^Domain: 'fake'\n  state\.state=1\n  cpu\.time=\d+\n  balloon\.current=49152\n  balloon\.maximum=65536\n` +
		`  vcpu\.current=1\n  vcpu\.0\.time=\d+\n  net\.count=1\n  net\.0\.name=net0\n  net\.0\.rx\.bytes=\d+\n  net\.0\.rx\.pkts=\d+\n` +
		`  net\.0\.tx\.bytes=\d+\n  net\.0\.tx\.pkts=\d+\n  block\.count=0\n\n` +
		`Domain: 'off'\n  state\.state=5\n\n$`
	if !regexp.MustCompile(want).MatchString(out) {
		t.Errorf("domstats printed:\n%s\nwant it to match %s", out, want)
	}

	var objs []map[string]any
	if err := json.Unmarshal([]byte(e.OK("", "domstats", "fake", "off", "-o", "json")), &objs); err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[0]["domain"] != "fake" || objs[0]["state.state"] != 1.0 || objs[0]["balloon.maximum"] != 65536.0 ||
		objs[0]["net.0.name"] != "net0" || objs[1]["domain"] != "off" || len(objs[1]) != 2 || objs[1]["state.state"] != 5.0 {
		t.Errorf("domstats -o json: %v", objs)
	}

	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"domstats", "fake", "-o", "yaml"}, `output format "yaml"`},
		{[]string{"domstats", "nope"}, `domain "nope" not found`},
		{[]string{"domstats", "off", "nope"}, `domain "nope" not found`},
	} {
		out, errs, code := e.Run("", tt.args...)
		if code != 1 || out != "" || !strings.Contains(errs, tt.want) {
			t.Errorf("minivirt %s: exit %d, stdout %q, stderr %q; want exit 1 and %q", strings.Join(tt.args, " "), code, out, errs, tt.want)
		}
	}
}
