package launcher

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minivirt/minivirt/pkg/domain"
)

// FuzzBuild checks what a domain goes through to start: no definition that
// define accepts panics the start's checks or the command line's builder,
// and one start refuses has its refusal in one line.
func FuzzBuild(f *testing.F) {
	for _, pattern := range []string{"../domain/testdata/corpus/*/*.xml", "../../../shared/corpus/*/*.xml"} {
		files, _ := filepath.Glob(pattern)
		for _, file := range files {
			if data, err := os.ReadFile(file); err == nil {
				f.Add(data)
			}
		}
	}
	for _, s := range classSamples {
		f.Add([]byte(`<domain type='qemu'><name>t</name><memory unit='MiB'>128</memory>` + s.top + `<os><kernel>/k</kernel></os><devices>` + s.devices + `</devices></domain>`))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := domain.Parse(bytes.NewReader(data))
		if err != nil || d.Validate() != nil {
			return
		}
		d.Warnings()
		if err := d.CheckStart(); err != nil {
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("refused at start in more than one line: %q", err)
			}
			return
		}
		Build(d, testEnv)
	})
}
