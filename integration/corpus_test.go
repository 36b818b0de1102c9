package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minivirt/minivirt/internal/testenv"
)

// corpusFloor is the least fraction of the corpus files that libvirt
// defines which minivirt must define too.
const corpusFloor = 0.90

// corpusCommandTimeout bounds every virsh and minivirt command of the test.
const corpusCommandTimeout = time.Minute

// sharedCorpusDirs are the corpus directories outside this repository: the
// project's shared corpus beside the checkout (../shared/corpus, as
// pkg/domain's corpusDirs finds it), and any more named in MINIVIRT_CORPUS
// (colon-separated).
func sharedCorpusDirs() []string {
	var dirs []string
	if _, err := os.Stat("../../shared/corpus"); err == nil {
		dirs = append(dirs, "../../shared/corpus")
	}
	if extra := os.Getenv("MINIVIRT_CORPUS"); extra != "" {
		for _, d := range strings.Split(extra, ":") {
			if d != "" {
				dirs = append(dirs, d)
			}
		}
	}
	return dirs
}

// goPanic matches what the Go runtime prints when a program panics or
// dies: at the start of a line, so that a warning about the <panic> device
// ("... start will refuse it: panic: <address> not supported") is no panic.
var goPanic = regexp.MustCompile(`(?m)^(panic: |fatal error: |goroutine \d+ \[)`)

// corpusFile is one domain XML file of the corpus and the two verdicts.
type corpusFile struct {
	path  string // to read
	label string // to report: relative to its corpus directory
	name  string // the domain's <name>

	libvirtDefined bool
	libvirtLine    string // libvirt's error's first line, when refused

	minivirtDefined bool
	minivirtLine    string // stderr's first line (a refusal, or a warning)
	minivirtExit    int
}

// TestCorpusBesideLibvirt: each domain of the shared corpus is defined by
// a real libvirtd (a private one the test starts) and by minivirt, and
// undefined again by both. minivirt refuses in one "minivirt: " line and
// never panics; of the files libvirt defines, minivirt must define at least
// corpusFloor. The side-by-side counts, minivirt's commonest reasons and
// every file it refuses that libvirt defines are printed.
func TestCorpusBesideLibvirt(t *testing.T) {
	// Not parallel: one libvirtd at a time (its QEMU driver locks system-wide state).
	var files []*corpusFile
	for _, dir := range sharedCorpusDirs() {
		filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
			if err == nil && !e.IsDir() && strings.HasSuffix(path, ".xml") {
				label, rerr := filepath.Rel(dir, path)
				if rerr != nil || dir != "../../shared/corpus" {
					label = path
				}
				files = append(files, &corpusFile{path: path, label: label})
			}
			return nil
		})
	}
	if len(files) == 0 {
		testenv.SkipUnlessRequired(t, "no shared corpus: put domain XML under ../shared/corpus beside the checkout (e.g. /work/shared/corpus/libvirt) or name directories in MINIVIRT_CORPUS")
	}
	for _, f := range files {
		data, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		var d struct {
			Name string `xml:"name"`
		}
		xml.Unmarshal(data, &d) // a file that does not parse keeps no name
		f.name = strings.TrimSpace(d.Name)
		if abs, err := filepath.Abs(f.path); err == nil {
			f.path = abs
		}
	}

	h := newHost(t)
	libvirtDir := filepath.Join(h.top, "libvirtd")
	if err := os.MkdirAll(libvirtDir, 0o755); err != nil {
		t.Fatal(err)
	}
	libvirtKVMShim(t, filepath.Join(h.top, "kvm-shim"))
	uri := testenv.Libvirtd(t, libvirtDir)
	testenv.Virtlogd(t, libvirtDir)
	virsh := func(args ...string) (string, string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), corpusCommandTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "virsh", append([]string{"-c", uri}, args...)...)
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if ctx.Err() != nil {
			t.Fatalf("virsh %s: no answer within %v", strings.Join(args, " "), corpusCommandTimeout)
		}
		return out.String(), errb.String(), err
	}
	// The private libvirtd keeps its definitions where the system's does
	// (/etc/libvirt/qemu): domains there would collide with the corpus's
	// names, and the test must not redefine or undefine them.
	out, errs, err := virsh("list", "--all", "--name")
	if err != nil {
		t.Fatalf("virsh list: %v: %s", err, errs)
	}
	if held := strings.Fields(out); len(held) > 0 {
		testenv.SkipUnlessRequired(t, "libvirt already holds domains (%s): this test defines and undefines libvirt's test-suite domains beside them; undefine them first", strings.Join(held, ", "))
	}

	// libvirt's verdicts.
	definedAs := regexp.MustCompile(`Domain '?([^' ]+)'? defined from`)
	for _, f := range files {
		out, errs, err := virsh("define", f.path)
		if err == nil {
			f.libvirtDefined = true
			name := f.name
			if m := definedAs.FindStringSubmatch(out); m != nil {
				name = m[1]
			}
			if name == "" {
				t.Errorf("%s: libvirt defined it, but under which name? %q", f.label, out)
				continue
			}
			if _, uerrs, err := virsh("undefine", name, "--keep-nvram", "--keep-tpm"); err != nil {
				if _, uerrs2, err := virsh("undefine", name); err != nil {
					t.Errorf("%s: virsh undefine %s: %s / %s", f.label, name, firstLine(uerrs), firstLine(uerrs2))
				}
			}
			continue
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("virsh define %s: %v", f.path, err)
		}
		f.libvirtLine = virshError(errs)
		if strings.Contains(f.libvirtLine, "failed to connect to the hypervisor") {
			t.Fatalf("virsh define %s: %s", f.path, f.libvirtLine)
		}
	}
	if out, _, err := virsh("list", "--all", "--name"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("libvirt still lists domains after the corpus: %q (%v)", out, err)
	}

	// minivirt's verdicts.
	mv := func(args ...string) (string, string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), corpusCommandTimeout)
		defer cancel()
		base := h.Command("", args...)
		cmd := exec.CommandContext(ctx, base.Path, base.Args[1:]...)
		cmd.Env, cmd.Stdin = base.Env, base.Stdin
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if ctx.Err() != nil {
			t.Fatalf("minivirt %s: no answer within %v", strings.Join(args, " "), corpusCommandTimeout)
		}
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatalf("minivirt %s: %v", strings.Join(args, " "), err)
		}
		if s := out.String() + errb.String(); goPanic.MatchString(s) {
			t.Errorf("minivirt %s panicked (exit %d):\n%s", strings.Join(args, " "), code, s)
		}
		return out.String(), errb.String(), code
	}
	listed := func() []string {
		out, errs, code := mv("list", "--all", "-o", "json")
		if code != 0 {
			t.Fatalf("minivirt list: exit %d: %s", code, errs)
		}
		var items []struct{ Name string }
		if err := json.Unmarshal([]byte(out), &items); err != nil {
			t.Fatalf("minivirt list -o json: %v: %q", err, out)
		}
		var names []string
		for _, it := range items {
			names = append(names, it.Name)
		}
		return names
	}
	for _, f := range files {
		out, errs, code := mv("define", f.path)
		f.minivirtExit = code
		f.minivirtLine = firstLine(errs)
		if code != 0 {
			if strings.Count(errs, "\n") != 1 || !strings.HasSuffix(errs, "\n") || !strings.HasPrefix(errs, "minivirt: ") {
				t.Errorf("%s: minivirt refused (exit %d) without exactly one \"minivirt: \" line on stderr: %q", f.label, code, errs)
			}
			continue
		}
		f.minivirtDefined = true
		name := f.name
		if n, ok := strings.CutPrefix(strings.TrimSpace(out), "Domain "); ok {
			name = strings.TrimSuffix(n, " defined")
		}
		found := false
		for _, n := range listed() {
			found = found || n == name
		}
		if !found {
			t.Errorf("%s: minivirt defined %q (%q) but does not list it", f.label, name, out)
			continue
		}
		if _, uerrs, code := mv("undefine", name); code != 0 {
			t.Errorf("%s: minivirt undefine %s: exit %d: %s", f.label, name, code, uerrs)
		}
	}
	if left := listed(); len(left) > 0 {
		t.Errorf("minivirt still lists domains after the corpus: %v", left)
	}

	// The side-by-side counts.
	var n, m, k, j int
	var missed, libvirtRefused []*corpusFile
	reasons := map[string]int{}
	for _, f := range files {
		if f.libvirtDefined {
			n++
		} else {
			libvirtRefused = append(libvirtRefused, f)
		}
		if f.minivirtDefined {
			m++
		}
		switch {
		case f.libvirtDefined && f.minivirtDefined:
			k++
		case f.minivirtDefined:
			j++
		case f.libvirtDefined:
			missed = append(missed, f)
			reasons[minivirtReason(f)]++
		}
	}
	// The report goes to the test's output, which `go test -v` and
	// `make corpus` show (and a failure always does).
	report := func(format string, args ...any) {
		t.Helper()
		t.Logf(format, args...)
	}
	share := 0.0
	if n > 0 {
		share = float64(k) / float64(n)
	}
	report("corpus beside libvirt: %d files; libvirt defines %d; minivirt defines %d; minivirt defines %d of libvirt's %d (%.1f%%); minivirt defines but libvirt refuses %d",
		len(files), n, m, k, n, 100*share, j)
	type kv struct {
		k string
		n int
	}
	var top []kv
	for r, c := range reasons {
		top = append(top, kv{r, c})
	}
	sort.Slice(top, func(a, b int) bool { return top[a].n > top[b].n || top[a].n == top[b].n && top[a].k < top[b].k })
	report("minivirt refuses %d files libvirt defines; its reasons (top 20 of %d):", len(missed), len(top))
	for i := 0; i < len(top) && i < 20; i++ {
		report("  %3d  %s", top[i].n, top[i].k)
	}
	report("files libvirt defines and minivirt refuses:")
	for _, f := range missed {
		report("  %s: %s", f.label, f.minivirtLine)
	}
	report("files libvirt refuses (%d):", len(libvirtRefused))
	for _, f := range libvirtRefused {
		theirs := "minivirt refuses too"
		if f.minivirtDefined {
			theirs = "minivirt defines it"
		}
		report("  %s: %s [%s]", f.label, f.libvirtLine, theirs)
	}

	// The verdicts as TSV, in the test's directory: kept with its logs
	// when the test fails, for the file-by-file view.
	var all bytes.Buffer
	all.WriteString("file\tlibvirt\tlibvirt_error\tminivirt\tminivirt_exit\tminivirt_stderr\n")
	for _, f := range files {
		fmt.Fprintf(&all, "%s\t%s\t%s\t%s\t%d\t%s\n", tsvField(f.label), verdict(f.libvirtDefined), tsvField(f.libvirtLine),
			verdict(f.minivirtDefined), f.minivirtExit, tsvField(f.minivirtLine))
	}
	if err := os.MkdirAll(filepath.Join(h.stateDir, "logs"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.stateDir, "logs", "corpus-verdicts.tsv"), all.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	if n == 0 {
		t.Fatalf("libvirt defined none of the %d corpus files: nothing to measure minivirt against", len(files))
	}
	if share < corpusFloor {
		need := int(math.Ceil(corpusFloor*float64(n)-1e-9)) - k
		t.Errorf("minivirt defines %d of the %d files libvirt defines (%.1f%%): %.1f points below the floor of %.0f%% (corpusFloor); %d more files must define",
			k, n, 100*share, 100*(corpusFloor-share), 100*corpusFloor, need)
	}
}

func verdict(defined bool) string {
	if defined {
		return "defined"
	}
	return "refused"
}

// virshError is the first line of libvirt's error in virsh's stderr,
// after virsh's own "Failed to define domain from FILE".
func virshError(stderr string) string {
	var lines []string
	for _, l := range strings.Split(stderr, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "error: Failed to define domain from ") {
			continue
		}
		return strings.TrimPrefix(l, "error: ")
	}
	if len(lines) > 0 {
		return strings.TrimPrefix(lines[0], "error: ")
	}
	return "(no message)"
}

// minivirtReason is the text of minivirt's refusal before its first ": ",
// once "minivirt: " and the file's path are taken off.
func minivirtReason(f *corpusFile) string {
	msg := strings.TrimPrefix(f.minivirtLine, "minivirt: ")
	msg = strings.TrimPrefix(msg, f.path+": ")
	if i := strings.Index(msg, ": "); i > 0 {
		msg = msg[:i]
	}
	if len(msg) > 90 {
		msg = msg[:90]
	}
	return msg
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

func tsvField(s string) string {
	return strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(s)
}

// libvirtKVMShim makes the libvirtd that testenv starts see /dev/kvm as
// its QEMU user (libvirt-qemu) may open it, when that user may not. Without
// it libvirt's QEMU capabilities are never valid on such a host: libvirt
// probes QEMU with CAP_DAC_OVERRIDE, so the probe finds KVM, then finds
// /dev/kvm closed to the QEMU user and throws the capabilities away at
// every look-up; each define then probes QEMU about ten times (some 40 s).
// libvirtd runs in a mount namespace of its own (unshare) where a 0666
// node of the same device is bound over /dev/kvm; the host's /dev/kvm is
// untouched. The verdicts are those of the unshimmed libvirtd, only fast.
func libvirtKVMShim(t *testing.T, dir string) {
	t.Helper()
	fi, err := os.Stat("/dev/kvm")
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return // no KVM: libvirt's capabilities say so, and stay valid
	}
	qemuUser := "libvirt-qemu" // Debian's build default
	if conf, err := os.ReadFile("/etc/libvirt/qemu.conf"); err == nil {
		if m := regexp.MustCompile(`(?m)^\s*user\s*=\s*"([^"]+)"`).FindSubmatch(conf); m != nil {
			qemuUser = string(m[1])
		}
	}
	u, err := user.Lookup(strings.TrimPrefix(qemuUser, "+"))
	if err != nil || canReadWrite(fi, u) {
		return
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Logf("libvirtd: /dev/kvm is closed to %s and there is no unshare: every define re-probes QEMU (slow)", qemuUser)
		return
	}
	real, err := exec.LookPath("libvirtd")
	if err != nil {
		return // testenv says what to install
	}
	st := fi.Sys().(*syscall.Stat_t)
	mnt, bin := filepath.Join(dir, "dev"), filepath.Join(dir, "bin")
	for _, d := range []string{mnt, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := fmt.Sprintf(`#!/bin/sh
exec %s --mount --propagation private /bin/sh -c 'mount -t tmpfs -o size=64k,mode=0755 minivirt-kvm "$1" && mknod -m 0666 "$1/kvm" c %d %d && mount --bind "$1/kvm" /dev/kvm && shift && exec "$0" "$@"' %s %s "$@"
`, shellQuote(unshare), unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)), shellQuote(real), shellQuote(mnt))
	if err := os.WriteFile(filepath.Join(bin, "libvirtd"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Logf("libvirtd: /dev/kvm is closed to %s: libvirtd runs in a mount namespace where it is open (else every define re-probes QEMU)", qemuUser)
}

// canReadWrite says whether u may open fi read-write by its mode.
func canReadWrite(fi os.FileInfo, u *user.User) bool {
	st := fi.Sys().(*syscall.Stat_t)
	perm := fi.Mode().Perm()
	if u.Uid == "0" || perm&0o006 == 0o006 {
		return true
	}
	if u.Uid == strconv.FormatUint(uint64(st.Uid), 10) {
		return perm&0o600 == 0o600
	}
	groups, _ := u.GroupIds()
	return slices.Contains(groups, strconv.FormatUint(uint64(st.Gid), 10)) && perm&0o060 == 0o060
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
