package supervisor

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minivirt/minivirt/pkg/domain"
)

// TestCheckHostBackingChain: a <backingStore> that describes the image's own
// chain starts; one that names another file, another format, a level the
// image lacks or an end where it has a backing image is refused, in one
// line naming the disk.
func TestCheckHostBackingChain(t *testing.T) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Skip("no qemu-img (Debian's qemu-utils; make deps installs it)")
	}
	dir := t.TempDir()
	base, top, other := filepath.Join(dir, "base.raw"), filepath.Join(dir, "top.qcow2"), filepath.Join(dir, "other.raw")
	for _, args := range [][]string{
		{"create", "-f", "raw", base, "1M"},
		{"create", "-f", "raw", other, "1M"},
		{"create", "-f", "qcow2", "-b", base, "-F", "raw", top},
	} {
		if out, err := exec.Command(qemuImg, args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	disk := func(backing string) string {
		return `<domain type='qemu'><name>b</name><memory unit='MiB'>64</memory><os><kernel>/bin/sh</kernel></os><devices>
<disk type='file'><driver name='qemu' type='qcow2'/><source file='` + top + `'/>` + backing + `<target dev='vda'/></disk></devices></domain>`
	}
	tests := []struct{ name, backing, want string }{
		{"the image's own chain", `<backingStore type='file'><format type='raw'/><source file='` + base + `'/><backingStore/></backingStore>`, ""},
		{"its first level only", `<backingStore type='file'><format type='raw'/><source file='` + base + `'/></backingStore>`, ""},
		{"another file", `<backingStore type='file'><format type='raw'/><source file='` + other + `'/></backingStore>`, "is backed by " + base + ", not " + other},
		{"another format", `<backingStore type='file'><format type='qcow2'/><source file='` + base + `'/></backingStore>`, "is raw, not qcow2"},
		{"no backing image", `<backingStore/>`, "says " + top + " has no backing image, but it has"},
		{"a level too many", `<backingStore type='file'><format type='raw'/><source file='` + base + `'/><backingStore type='file'><source file='` + other + `'/></backingStore></backingStore>`, "has no backing image, but the domain names " + other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := domain.Parse(strings.NewReader(disk(tt.backing)))
			if err == nil {
				err = d.Validate()
			}
			if err != nil {
				t.Fatal(err)
			}
			_, err = CheckHost(context.Background(), d, qemuImg)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("error %v; want one containing %q", err, tt.want)
			case err != nil && (!strings.HasPrefix(err.Error(), "disk vda backingStore: ") || strings.Contains(err.Error(), "\n")):
				t.Fatalf("error %q: not one line naming the disk", err)
			}
		})
	}
}
