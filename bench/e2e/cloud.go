package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
)

// cloudFigures times a cloud image from one command to the first
// successful ssh login, through minivirt (`create --start`, then `minivirt
// ssh`) and through virt-install with a private libvirtd (`virt-install
// --import --cloud-init`, then ssh to a forwarded host port), the rounds
// interleaved, on the same image with the same cloud-init user-data and
// meta-data: minivirt's seed for the domain, read back from its ISO.
func (b *bench) cloudFigures(image string) error {
	image, err := filepath.Abs(image)
	if err != nil {
		return err
	}
	vi, err := exec.LookPath("virt-install")
	if err != nil {
		return fmt.Errorf("virt-install not found: run `make deps` (Debian package virtinst)")
	}
	lvDir := filepath.Join(b.dir, "libvirtd")
	if err := os.MkdirAll(lvDir, 0o711); err != nil {
		return err
	}
	stopLogd, err := testenv.StartVirtlogd(lvDir)
	if err != nil {
		return err
	}
	defer stopLogd()
	uri, stopLibvirtd, err := testenv.StartLibvirtd(lvDir)
	if err != nil {
		return err
	}
	defer stopLibvirtd()

	e := b.env("cloud")
	var mv, lv []cloudRun
	for i := 0; i < *cloudReps; i++ {
		r, err := b.minivirtCloud(e, image, fmt.Sprintf("mv-cloud-%d", i))
		if err != nil {
			return fmt.Errorf("minivirt, round %d: %w", i+1, err)
		}
		mv = append(mv, r)
		r, err = b.virtInstallCloud(e, vi, uri, image, fmt.Sprintf("lv-cloud-%d", i))
		if err != nil {
			return fmt.Errorf("virt-install, round %d: %w", i+1, err)
		}
		lv = append(lv, r)
	}
	col := func(runs []cloudRun, f func(cloudRun) time.Duration) (time.Duration, string) {
		var ds []time.Duration
		var s []string
		for _, r := range runs {
			ds = append(ds, f(r))
			s = append(s, fmt.Sprintf("%.1f", f(r).Seconds()))
		}
		return median(ds), strings.Join(s, ", ")
	}
	login := func(r cloudRun) time.Duration { return r.login }
	returned := func(r cloudRun) time.Duration { return r.returned }
	fmt.Printf("## A cloud image, from one command to the first ssh login\n\n")
	fmt.Printf("Image %s (Debian 12, cloud-init, openssh-server, qemu-guest-agent; `make cloud-image`), 1 GiB and 2 vCPUs on each side, accel %s, libvirtd %s (private, started before the rounds). The clock starts with the command; `true` is run over ssh every second from then on, while the command runs, until one succeeds. The rounds alternate.\n\n", filepath.Base(image), b.accel, libvirtVersion())
	fmt.Printf("| side | first ssh login, median of %d (s) | runs (s) | the command returned, median (s) | runs (s) |\n|---|---:|---|---:|---|\n", *cloudReps)
	mvLogin, mvLogins := col(mv, login)
	mvRet, mvRets := col(mv, returned)
	lvLogin, lvLogins := col(lv, login)
	lvRet, lvRets := col(lv, returned)
	fmt.Printf("| minivirt: `create --image --start`, `minivirt ssh` | %.1f | %s | %.1f | %s |\n", mvLogin.Seconds(), mvLogins, mvRet.Seconds(), mvRets)
	fmt.Printf("| virt-install + libvirtd: `--import --cloud-init`, ssh to a forwarded port | %.1f | %s | %.1f | %s |\n\n", lvLogin.Seconds(), lvLogins, lvRet.Seconds(), lvRets)
	qemu, qemus := col(lv, func(r cloudRun) time.Duration { return r.qemu })
	fmt.Printf("libvirtd started QEMU %.1f s after virt-install began (median; runs %s), by its own log.\n\n", qemu.Seconds(), qemus)
	mvBoot, mvBoots := col(mv, func(r cloudRun) time.Duration { return r.login - r.returned })
	lvBoot, lvBoots := col(lv, func(r cloudRun) time.Duration { return r.login - r.qemu })
	fmt.Printf("From QEMU's start to the first login: minivirt %.1f s (runs %s; counted from create's return, when QEMU already runs), libvirt %.1f s (runs %s): %.2fx.\n\n", mvBoot.Seconds(), mvBoots, lvBoot.Seconds(), lvBoots, float64(mvBoot)/float64(lvBoot))
	fmt.Printf("First ssh login, minivirt / virt-install: %.2fx\n\n", float64(mvLogin)/float64(lvLogin))
	return nil
}

// cloudRun is one side's round: when, counted from the command, the first
// ssh login succeeded, the command returned, and (libvirt) QEMU started.
type cloudRun struct{ login, returned, qemu time.Duration }

// race runs the command and tries login every second from the start,
// while it runs, until one succeeds; the command must succeed too.
func race(cmd *exec.Cmd, login func(context.Context) error) (cloudRun, error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return cloudRun{}, err
	}
	var r cloudRun
	done := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		r.returned = time.Since(t0)
		done <- err
	}()
	loginErr := untilLogin(login)
	r.login = time.Since(t0)
	if err := <-done; err != nil {
		return r, fmt.Errorf("%s: %v: %s", filepath.Base(cmd.Path), err, out.String())
	}
	return r, loginErr
}

// minivirtCloud times `create --start` and the first `minivirt ssh`.
func (b *bench) minivirtCloud(e env, image, name string) (cloudRun, error) {
	defer func() {
		b.mv(e, "", "destroy", name)
		b.mv(e, "", "undefine", name)
	}()
	cmd := exec.Command(b.bin, "--state-dir", e.state, "--run-dir", e.run, "create", name, "--image", image, "--start")
	return race(cmd, func(ctx context.Context) error {
		return exec.CommandContext(ctx, b.bin, "--state-dir", e.state, "--run-dir", e.run, "ssh", name, "--", "true").Run()
	})
}

// virtInstallCloud times virt-install to the first ssh login, with the seed
// minivirt makes for a domain defined (never started) for the purpose.
func (b *bench) virtInstallCloud(e env, vi, uri, image, name string) (cloudRun, error) {
	seedOf := name + "-seed"
	if err := b.mv(e, "", "create", seedOf, "--image", image); err != nil {
		return cloudRun{}, err
	}
	defer b.mv(e, "", "undefine", seedOf)
	userData, metaData, key, user, err := b.seedOf(e, seedOf)
	if err != nil {
		return cloudRun{}, err
	}
	overlay := filepath.Join(b.dir, "libvirtd", name+".qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image, overlay).CombinedOutput(); err != nil {
		return cloudRun{}, fmt.Errorf("qemu-img: %v: %s", err, out)
	}
	defer os.Remove(overlay)
	port, err := freePort()
	if err != nil {
		return cloudRun{}, err
	}
	// libvirt's user network has no host forward without passt (not in
	// Debian 12's libvirt packages): QEMU's own, through qemu-commandline.
	// The machine is pc: virt-install puts the seed on a CD-ROM, SATA on
	// q35, and Debian's cloud kernel has no AHCI driver (it has PIIX).
	args := []string{"--connect", uri, "--name", name, "--memory", "1024", "--vcpus", "2", "--virt-type", b.domainType,
		"--import", "--disk", "path=" + overlay + ",format=qcow2,bus=virtio", "--osinfo", "linux2022", "--machine", "pc",
		"--cloud-init", "user-data=" + userData + ",meta-data=" + metaData,
		"--network", "none", fmt.Sprintf("--qemu-commandline=-netdev user,id=bench0,hostfwd=tcp:127.0.0.1:%d-:22 -device virtio-net-pci,netdev=bench0,addr=0x1e", port),
		"--serial", "file,path=" + filepath.Join(b.dir, "libvirtd", name+".console.log"),
		"--graphics", "none", "--noautoconsole"}
	defer func() {
		exec.Command("virsh", "-c", uri, "destroy", name).Run()
		exec.Command("virsh", "-c", uri, "undefine", name).Run()
	}()
	t0 := time.Now()
	r, err := race(exec.Command(vi, args...), func(ctx context.Context) error {
		return exec.CommandContext(ctx, "ssh", "-F", "none", "-i", key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
			"-o", "ConnectTimeout=5", "-p", fmt.Sprint(port), user+"@127.0.0.1", "true").Run()
	})
	if err != nil {
		return r, err
	}
	if r.qemu, err = qemuStarted(filepath.Join("/var/log/libvirt/qemu", name+".log"), t0); err != nil {
		return r, err
	}
	return r, nil
}

// qemuStarted reads when libvirtd last started the domain's QEMU from its
// log, as a time after t0.
func qemuStarted(log string, t0 time.Time) (time.Duration, error) {
	data, err := os.ReadFile(log)
	if err != nil {
		return 0, err
	}
	var last time.Time
	for _, line := range strings.Split(string(data), "\n") {
		if stamp, rest, ok := strings.Cut(line, ": "); ok && strings.HasPrefix(rest, "starting up") {
			if t, err := time.Parse("2006-01-02 15:04:05.000-0700", stamp); err == nil {
				last = t
			}
		}
	}
	if last.IsZero() || last.Before(t0.Add(-time.Second)) {
		return 0, fmt.Errorf("%s: no start of QEMU after %s", log, t0.Format(time.RFC3339))
	}
	return last.Sub(t0), nil
}

// seedOf extracts the user-data and meta-data of the seed minivirt made
// for name, and returns them with the login's key and user.
func (b *bench) seedOf(e env, name string) (userData, metaData, key, user string, err error) {
	var made struct{ Files []string }
	var access struct {
		User         string `json:"user"`
		IdentityFile string `json:"identity_file"`
	}
	for _, f := range []struct {
		path string
		v    any
	}{{filepath.Join(e.state, "created", name+".json"), &made}, {filepath.Join(e.state, "access", name+".json"), &access}} {
		data, err := os.ReadFile(f.path)
		if err != nil {
			return "", "", "", "", err
		}
		if err := json.Unmarshal(data, f.v); err != nil {
			return "", "", "", "", fmt.Errorf("%s: %w", f.path, err)
		}
	}
	var seed string
	for _, f := range made.Files {
		if strings.HasSuffix(f, ".iso") {
			seed = f
		}
	}
	if seed == "" {
		return "", "", "", "", fmt.Errorf("no seed among what create made for %s: %q", name, made.Files)
	}
	dir := filepath.Join(b.dir, "libvirtd", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", "", "", err
	}
	for _, f := range []string{"user-data", "meta-data"} {
		out, err := exec.Command("isoinfo", "-R", "-i", seed, "-x", "/"+f).Output()
		if err != nil || len(out) == 0 {
			return "", "", "", "", fmt.Errorf("isoinfo -x /%s %s: %v", f, seed, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), out, 0o600); err != nil {
			return "", "", "", "", err
		}
	}
	return filepath.Join(dir, "user-data"), filepath.Join(dir, "meta-data"), access.IdentityFile, access.User, nil
}

// untilLogin runs login every second until it succeeds, for at most ten
// minutes.
func untilLogin(login func(context.Context) error) error {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := login(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no ssh login within 10 minutes: %w", err)
		}
		time.Sleep(time.Second)
	}
}

// freePort returns a loopback TCP port nobody listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// libvirtVersion is libvirtd's version, as it says it.
func libvirtVersion() string {
	out, err := exec.Command("libvirtd", "--version").Output()
	if err != nil {
		return "(unknown version)"
	}
	f := strings.Fields(string(out))
	return f[len(f)-1]
}
