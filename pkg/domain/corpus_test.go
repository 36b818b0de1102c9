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
// byte for byte, or is refused with one line; none panics. It reports how
// many define as they are, and the commonest reasons for refusing.
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
	defined, refused := 0, 0
	reasons := map[string]int{}
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
			refused++
			msg := err.Error()
			if msg == "" || strings.Contains(msg, "\n") {
				t.Errorf("%s: refused without one line: %q", f, msg)
			}
			reasons[reason(msg)]++
			continue
		}
		defined++
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
	t.Logf("corpus: %d files, %d define as they are, %d refused", len(files), defined, refused)
	fmt.Printf("corpus: %d files, %d define as they are, %d refused\n", len(files), defined, refused)
	type kv struct {
		k string
		n int
	}
	var top []kv
	for k, n := range reasons {
		top = append(top, kv{k, n})
	}
	sort.Slice(top, func(i, j int) bool { return top[i].n > top[j].n || top[i].n == top[j].n && top[i].k < top[j].k })
	for i := 0; i < len(top) && i < 12; i++ {
		t.Logf("  refused %3d: %s", top[i].n, top[i].k)
	}
}

// reason shortens a refusal to the element it names, for the tally.
func reason(msg string) string {
	if strings.HasPrefix(msg, "XML: ") {
		msg = msg[5:]
		if len(msg) > 60 {
			msg = msg[:60]
		}
		return "XML: " + msg
	}
	if i := strings.Index(msg, ": "); i > 0 && i < 80 {
		msg = msg[:i]
	}
	if len(msg) > 90 {
		msg = msg[:90]
	}
	return msg
}
