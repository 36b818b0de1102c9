package domain

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// corpusDirs are the corpus directories: testdata/corpus; the project's
// shared corpus beside the checkout (../shared/corpus), where collections
// that may not be committed to this repository, such as libvirt's own
// test-suite domains, can be placed; and any more named in MINIVIRT_CORPUS
// (colon-separated).
func corpusDirs() []string {
	dirs := []string{"testdata/corpus"}
	if _, err := os.Stat("../../../shared/corpus"); err == nil {
		dirs = append(dirs, "../../../shared/corpus")
	}
	if extra := os.Getenv("MINIVIRT_CORPUS"); extra != "" {
		dirs = append(dirs, strings.Split(extra, ":")...)
	}
	return dirs
}

// TestCorpus: every domain of the corpus either defines and round-trips
// byte for byte, or is refused at define with one line; none panics. Of
// those that define, it counts the ones whose tuning is kept and said and
// the ones start would refuse here, and tallies the reasons of both
// refusals: `make corpus` prints them.
func TestCorpus(t *testing.T) {
	var files []string
	for _, dir := range corpusDirs() {
		filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
			if err == nil && !e.IsDir() && strings.HasSuffix(path, ".xml") {
				files = append(files, path)
			}
			return nil
		})
	}
	if len(files) == 0 {
		t.Fatal("no corpus")
	}
	defined, kept, atStart, atDefine := 0, 0, 0, 0
	defineReasons, startReasons := map[string]int{}, map[string]int{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		d, err := Parse(bytes.NewReader(data))
		if err == nil {
			err = d.Validate()
		}
		if err != nil {
			atDefine++
			msg := err.Error()
			if msg == "" || strings.Contains(msg, "\n") {
				t.Errorf("%s: refused without one line: %q", f, msg)
			}
			defineReasons[reason(msg)]++
			continue
		}
		defined++
		if len(d.KeptElements()) > 0 {
			kept++
		}
		if why := d.RefusedAtStart(); len(why) > 0 {
			atStart++
			for _, w := range why {
				if w == "" || strings.Contains(w, "\n") {
					t.Errorf("%s: refused at start without one line: %q", f, w)
				}
			}
			startReasons[reason(why[0])]++
			if err := d.CheckStart(); err == nil || err.Error() != why[0] {
				t.Errorf("%s: CheckStart says %v; RefusedAtStart %q", f, err, why[0])
			}
		} else if err := d.CheckStart(); err != nil {
			t.Errorf("%s: CheckStart refuses what RefusedAtStart does not list: %v", f, err)
		}
		a, err := d.XML()
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		back, err := Parse(bytes.NewReader(a))
		if err == nil {
			err = back.Validate()
		}
		if err != nil {
			t.Errorf("%s: its own form is refused: %v\n%s", f, err, a)
			continue
		}
		if b, _ := back.XML(); !bytes.Equal(a, b) {
			t.Errorf("%s: round trip differs:\n%s\n---\n%s", f, a, b)
		}
		if _, err := d.LibvirtXML(testNetwork); err != nil && !errors.Is(err, ErrNotMovable) {
			t.Errorf("%s: libvirt form: %v", f, err)
		}
	}
	summary := fmt.Sprintf("corpus: %d files: %d defined (%d with tuning kept and said, %d that start refuses here), %d refused at define",
		len(files), defined, kept, atStart, atDefine)
	t.Log(summary)
	for _, tally := range []struct {
		class   Class
		reasons map[string]int
	}{{RefusedAtDefine, defineReasons}, {RefusedAtStart, startReasons}} {
		type kv struct {
			k string
			n int
		}
		var top []kv
		for k, n := range tally.reasons {
			top = append(top, kv{k, n})
		}
		sort.Slice(top, func(i, j int) bool { return top[i].n > top[j].n || top[i].n == top[j].n && top[i].k < top[j].k })
		for i := 0; i < len(top) && i < 15; i++ {
			t.Logf("  %s %3d: %s", tally.class, top[i].n, top[i].k)
		}
	}
}

// reason shortens a refusal to the element it names, for the tally: up to
// where the line starts to say why or what to do.
func reason(msg string) string {
	if strings.HasPrefix(msg, "XML: ") {
		return "XML: " + msg[5:min(len(msg), 65)]
	}
	for _, cut := range []string{" not supported", "; ", ": minivirt", ": must", ": an ", ": a ", ": QEMU", ": this host", ": only"} {
		if i := strings.Index(msg, cut); i > 0 {
			msg = msg[:i]
		}
	}
	return msg[:min(len(msg), 90)]
}
