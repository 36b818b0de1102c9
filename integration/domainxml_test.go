package integration

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
)

// TestUEFIBoot: a guest with <os firmware='efi'> boots through OVMF (direct
// kernel boot) to userspace; its variable store is made in the state
// directory, kept across starts, and removed by undefine.
func TestUEFIBoot(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	g := guest{name: "efi", os: "firmware='efi'", cmdline: "minivirt.poweroff"}
	h.OK(g.xml(), "define", "-")
	h.OK("", "start", "efi")
	h.waitLog("efi", readyLine, 3*time.Minute)
	if !strings.Contains(h.qemuLog("efi"), "if=pflash") {
		t.Error("QEMU was not given the UEFI firmware as pflash")
	}
	h.waitState("efi", "shut off", 2*time.Minute)
	nvram := filepath.Join(h.stateDir, "nvram", "efi_VARS.fd")
	if !exists(nvram) {
		t.Fatalf("no NVRAM copy at %s", nvram)
	}
	h.OK("", "undefine", "efi")
	if exists(nvram) {
		t.Error("undefine left the domain's NVRAM")
	}
}

func (h *host) qemuLog(name string) string {
	data, _ := os.ReadFile(filepath.Join(h.stateDir, "logs", name+".qemu.log"))
	return string(data)
}

func checksum(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", sha256.Sum256(data))
}

// TestTransientDisk: the guest writes to a <transient/> disk and reads its
// write back; when the guest ends the write is gone and the base image is
// byte for byte what it was.
func TestTransientDisk(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	base := filepath.Join(h.top, "base.img")
	if err := os.WriteFile(base, append([]byte("BASE-IMAGE-MARK\n"), make([]byte, 1<<20)...), 0o644); err != nil {
		t.Fatal(err)
	}
	before := checksum(t, base)
	disk := `<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='` + base + `'/><target dev='vda' bus='virtio'/><transient/></disk>`
	script := `echo GUEST-WROTE-THIS > /dev/vda; sync; echo 3 > /proc/sys/vm/drop_caches; echo "read: $(head -c 16 /dev/vda)"`
	_, errs, code := h.Run(guest{name: "tr", script: script, cmdline: "minivirt.poweroff", devices: disk}.xml(), "run", "--timeout", "120s", "-")
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, errs)
	}
	if log := h.readLog("tr"); !strings.Contains(log, "read: GUEST-WROTE-THIS") {
		t.Fatalf("the guest's write did not take effect on the transient disk:\n%s", log)
	}
	if after := checksum(t, base); after != before {
		t.Error("the base image changed under a transient disk")
	}
}

func (h *host) readLog(name string) string {
	data, _ := os.ReadFile(h.logPath(name))
	return string(data)
}

// TestBlockDevice: a host block device (a loop device the test makes) is
// the guest's disk.
func TestBlockDevice(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	img := filepath.Join(h.top, "block.img")
	if err := os.WriteFile(img, append([]byte("BLOCK-DEVICE-MARK\n"), make([]byte, 1<<20)...), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Fatalf("losetup: %v (the test needs root and loop devices)", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	disk := `<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none' io='native'/><source dev='` + loop + `'/><target dev='vda' bus='virtio'/><serial>minivirt-blk</serial></disk>`
	script := `echo "block: $(head -c 17 /dev/vda) serial: $(cat /sys/block/vda/serial)"`
	_, errs, code := h.Run(guest{name: "blk", script: script, cmdline: "minivirt.poweroff", devices: disk}.xml(), "run", "--timeout", "120s", "-")
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, errs)
	}
	if log := h.readLog("blk"); !strings.Contains(log, "block: BLOCK-DEVICE-MARK serial: minivirt-blk") {
		t.Fatalf("the guest did not see the block device and its serial:\n%s", log)
	}
}

// TestVirtioConsole: <console type='pty'><target type='virtio'/></console>
// gives the guest hvc0, and it is the console minivirt logs.
func TestVirtioConsole(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	devices := `<console type='pty'><target type='virtio'/></console><serial type='file'><source path='` + filepath.Join(h.top, "ttyS0.log") + `'/></serial>`
	script := `echo "on hvc0: $(cat /sys/class/tty/hvc0/dev)" > /dev/hvc0`
	_, errs, code := h.Run(guest{name: "hvc", script: script, cmdline: "minivirt.poweroff", devices: devices}.xml(), "run", "--timeout", "120s", "-")
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, errs)
	}
	if log := h.readLog("hvc"); !strings.Contains(log, "on hvc0: 229:0") {
		t.Fatalf("nothing from hvc0 in the console log:\n%s", log)
	}
	if data, _ := os.ReadFile(filepath.Join(h.top, "ttyS0.log")); !strings.Contains(string(data), readyLine) {
		t.Errorf("the second console (ttyS0 to a file) did not get the guest's boot output")
	}
}

// TestVirtInstallDomains: what virt-install prints for a kernel boot with a
// user network, and for a cloud-image import (qcow2 disk plus a cdrom seed),
// defines as printed and starts. virt-install runs against a private
// libvirtd that the test starts.
func TestVirtInstallDomains(t *testing.T) {
	// Not parallel: one libvirtd at a time (its QEMU driver locks system-wide state).
	h := newHost(t)
	vi, err := exec.LookPath("virt-install")
	if err != nil {
		t.Fatal("virt-install not found: run `make deps` (Debian package virtinst)")
	}
	uri := testenv.Libvirtd(t, filepath.Join(h.top, "libvirtd"))
	disk := filepath.Join(h.top, "cloud.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	seed := filepath.Join(h.top, "seed.iso")
	os.WriteFile(seed, make([]byte, 1<<20), 0o644)
	common := []string{"--print-xml", "--dry-run", "--connect", uri, "--virt-type", "qemu", "--noautoconsole", "--graphics", "none", "--network", "user"}
	kernel := fmt.Sprintf("kernel=%s,initrd=%s,kernel_args=console=ttyS0 panic=-1", filepath.Join(guestDir, "vmlinuz"), filepath.Join(guestDir, "initrd.gz"))
	cases := []struct {
		name  string
		args  []string
		ready bool // the tiny guest boots: wait for userspace
	}{
		{"vi-kernel", []string{"--memory", "256", "--boot", kernel, "--disk", "none", "--osinfo", "linux2022"}, true},
		{"vi-generic", []string{"--memory", "256", "--boot", kernel, "--disk", "none", "--osinfo", "detect=on,require=off"}, true},
		{"vi-cloud", []string{"--memory", "256", "--vcpus", "2", "--import", "--disk", disk + ",format=qcow2,bus=virtio", "--disk", seed + ",device=cdrom", "--osinfo", "debian11"}, false},
	}
	for _, c := range cases {
		out, err := exec.Command(vi, append(append([]string{"--name", c.name}, common...), c.args...)...).Output()
		if err != nil {
			t.Fatalf("%s: virt-install: %v", c.name, err)
		}
		h.OK(string(out), "define", "-")
		h.OK("", "start", c.name)
		if c.ready {
			h.waitLog(c.name, readyLine, 3*time.Minute)
		} else if st := h.status(c.name); st.State != "running" {
			t.Errorf("%s: %+v after start", c.name, st)
		}
		if c.name == "vi-kernel" {
			// virt-install's guest agent channel has no path: minivirt
			// binds one in the run directory, and status says which.
			var st struct {
				VirtioPorts []struct{ Name, Path string } `json:"virtio_ports"`
			}
			json.Unmarshal([]byte(h.OK("", "status", c.name, "-o", "json")), &st)
			want := filepath.Join(h.runDirOf(c.name), "channel.org.qemu.guest_agent.0.sock")
			if len(st.VirtioPorts) != 1 || st.VirtioPorts[0].Name != "org.qemu.guest_agent.0" || st.VirtioPorts[0].Path != want {
				t.Errorf("%s: virtio ports %+v; want the agent on %s", c.name, st.VirtioPorts, want)
			} else if fi, err := os.Stat(want); err != nil || fi.Mode()&os.ModeSocket == 0 {
				t.Errorf("%s: no socket at %s", c.name, want)
			}
		}
		h.OK("", "destroy", c.name)
	}
}

// TestQEMUCommandline: <qemu:commandline> reaches QEMU's argv and
// environment, and status says the domain is tainted.
func TestQEMUCommandline(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	g := guest{name: "cl", top: `<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>` +
		`<qemu:arg value='-device'/><qemu:arg value='virtio-rng-pci,id=mvextra'/><qemu:env name='MINIVIRT_TEST_ENV' value='passed'/></qemu:commandline>`}
	h.boot(g)
	var st struct {
		Tainted bool `json:"tainted"`
		QEMUPID int  `json:"qemu_pid"`
	}
	json.Unmarshal([]byte(h.OK("", "status", "cl", "-o", "json")), &st)
	if !st.Tainted {
		t.Error("status does not say tainted")
	}
	argv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.QEMUPID))
	environ, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", st.QEMUPID))
	if !strings.Contains(string(argv), "virtio-rng-pci,id=mvextra") || !strings.Contains(string(environ), "MINIVIRT_TEST_ENV=passed") {
		t.Errorf("QEMU did not get the arguments or environment")
	}
	out := h.OK("", "qmp", "cl", `{"execute":"qom-list","arguments":{"path":"/machine/peripheral"}}`)
	if !strings.Contains(out, "mvextra") {
		t.Errorf("the device from <qemu:commandline> is not in the machine: %s", out)
	}
	h.OK("", "destroy", "cl")
}

// TestGuestDevices: video, a USB tablet and sound are given to the guest
// (headless: nobody sees or hears them), as libvirt gives them.
func TestGuestDevices(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	devices := `<video><model type='vga'/></video><input type='tablet' bus='usb'/><sound model='ich9'/><graphics type='vnc' port='-1'/>`
	g := guest{name: "dev", devices: devices, cmdline: "minivirt.poweroff",
		script: `for d in /sys/bus/pci/devices/*; do echo "pci class $(cat $d/class)"; done`}
	_, stderr, code := h.Run(g.xml(), "run", "--timeout", "120s", "-")
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "not served: <graphics>") {
		t.Errorf("define did not say <graphics> is not served: %q", stderr)
	}
	log := h.readLog("dev")
	for class, what := range map[string]string{"0x030000": "VGA", "0x040300": "HD audio", "0x0c0330": "xHCI USB"} {
		if !strings.Contains(log, "pci class "+class) {
			t.Errorf("the guest has no %s device (class %s):\n%s", what, class, log)
		}
	}
}
