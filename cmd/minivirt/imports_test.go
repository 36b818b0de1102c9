package main

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsOnlyTheEngine holds the command line to its one job: it
// parses, calls the engine and prints. Of minivirt's own packages its
// non-test files import only pkg/manager (the engine) and pkg/domain (the
// model); the supervisor, launcher, store, relay and the rest are the
// engine's to use.
func TestImportsOnlyTheEngine(t *testing.T) {
	const module = "github.com/minivirt/minivirt/"
	allowed := map[string]bool{module + "pkg/manager": true, module + "pkg/domain": true}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(path, module) && !allowed[path] {
				t.Errorf("%s imports %s: the command line uses pkg/manager and pkg/domain only", fset.Position(imp.Pos()), path)
			}
		}
	}
}
