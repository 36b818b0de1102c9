package integration

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
)

// TestLibvirtDevices boots one guest with the device families libvirt users
// bring and checks each from inside it: a disk on a virtio-scsi controller,
// an nbd disk served by qemu-nbd on a Unix socket (with an iothread), an
// empty SCSI cdrom that change-media fills while the guest runs, the
// balloon's target from <currentMemory>, SMBIOS strings from <sysinfo>, a
// host directory shared by virtiofs (read and written) and by 9p (the
// device only: the guest's kernel has no 9p), a serial port on a
// TCP connection, and an i6300esb watchdog whose pause action fires.
func TestLibvirtDevices(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		testenv.SkipUnlessRequired(t, "virtiofsd and qemu-nbd as the test runs them need root (make test runs as root)")
	}
	h := newHost(t)
	scsi := writeMarked(t, filepath.Join(h.top, "scsi.img"), "SCSI-DISK-MARK")
	nbdImage := writeMarked(t, filepath.Join(h.top, "nbd.img"), "NBD-DISK-MARK")
	medium := writeMarked(t, filepath.Join(h.top, "medium.iso"), "CDROM-MEDIUM-MARK")
	share := filepath.Join(h.top, "share")
	if err := os.MkdirAll(share, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(share, "hello.txt"), []byte("HELLO-FROM-THE-HOST\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	nbdSock := filepath.Join(h.top, "nbd.sock")
	startNBD(t, nbdSock, nbdImage)
	// QEMU connects the guest's second serial port to this listener.
	serialLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer serialLn.Close()
	serialPort := strconv.Itoa(serialLn.Addr().(*net.TCPAddr).Port)

	g := guest{name: "dev", osChild: `<smbios mode='sysinfo'/>`,
		top: `<currentMemory unit='MiB'>96</currentMemory><iothreads>1</iothreads>
<sysinfo type='smbios'><bios><entry name='vendor'>MinivirtBIOS</entry></bios>
<system><entry name='manufacturer'>Acme Corp</entry><entry name='product'>Widget, Mk II</entry><entry name='serial'>SN-123</entry></system>
<baseBoard><entry name='manufacturer'>BoardCo</entry></baseBoard><chassis><entry name='manufacturer'>ChassisCo</entry></chassis></sysinfo>`,
		devices: `<controller type='scsi' index='0' model='virtio-scsi'/>
<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='` + scsi + `'/><target dev='sda' bus='scsi'/></disk>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sdb' bus='scsi'/><readonly/></disk>
<disk type='network' device='disk'><driver name='qemu' type='raw' iothread='1' queues='1'/><source protocol='nbd'><host transport='unix' socket='` + nbdSock + `'/></source><target dev='vda' bus='virtio'/></disk>
<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/><source dir='` + share + `'/><target dir='hostshare'/></filesystem>
<filesystem type='mount' accessmode='mapped'><source dir='` + share + `'/><target dir='ninep'/><readonly/></filesystem>
<serial type='pty'/>
<serial type='tcp'><source mode='connect' host='127.0.0.1' service='` + serialPort + `'/></serial>
<watchdog model='i6300esb' action='pause'/>`}
	h.boot(g)

	// Each check waits inside the guest for its driver to find the device.
	wait := func(cond string) string {
		return `for i in $(seq 100); do ` + cond + ` && break; sleep 0.1; done; `
	}
	expect := func(what, command, want string) string {
		t.Helper()
		out, rc := h.exec("dev", command, time.Minute)
		if rc != 0 || !strings.Contains(out, want) {
			t.Errorf("%s: exit %d, output %q; want %q", what, rc, out, want)
		}
		return out
	}
	expect("virtio-scsi disk", wait("[ -b /dev/sda ]")+`head -c 14 /dev/sda`, "SCSI-DISK-MARK")
	expect("nbd disk", `head -c 13 /dev/vda`, "NBD-DISK-MARK")
	expect("SMBIOS", `cat /sys/class/dmi/id/sys_vendor /sys/class/dmi/id/product_name /sys/class/dmi/id/product_serial /sys/class/dmi/id/bios_vendor /sys/class/dmi/id/board_vendor /sys/class/dmi/id/chassis_vendor | tr '\n' '|'`,
		"Acme Corp|Widget, Mk II|SN-123|MinivirtBIOS|BoardCo|ChassisCo|")
	// 192 MiB with the balloon at 96 MiB: the guest has given half back.
	out := expect("balloon", wait(`[ $(awk '/MemTotal/{print $2}' /proc/meminfo) -lt 110000 ]`)+`grep MemTotal /proc/meminfo`, "MemTotal")
	if kb := memTotal(out); kb == 0 || kb >= 110000 {
		t.Errorf("balloon: the guest has %d kB; the balloon's target is 96 MiB of 192", kb)
	}
	if info, errs, _ := h.Run("", "dominfo", "dev"); !regexp.MustCompile(`Used memory: +98304 KiB`).MatchString(info) {
		t.Errorf("dominfo does not show the balloon's target:\n%s%s", info, errs)
	}
	expect("virtiofs", `mount -t virtiofs hostshare /mnt && cat /mnt/hello.txt && echo WRITTEN-BY-THE-GUEST > /mnt/back.txt && sync`, "HELLO-FROM-THE-HOST")
	if data, err := os.ReadFile(filepath.Join(share, "back.txt")); err != nil || string(data) != "WRITTEN-BY-THE-GUEST\n" {
		t.Errorf("virtiofs: the guest's file on the host: %q, %v", data, err)
	}
	// The 9p share beside it: this guest's kernel (Debian's cloud kernel)
	// has no 9p driver, so here the check stops at the device, a virtio 9p
	// transport (virtio device id 9); TestNinePShare mounts one.
	expect("9p device", `grep -l '^0x0009$' /sys/bus/virtio/devices/*/device`, "/device")

	// The serial port on TCP: what the guest writes to ttyS1 arrives.
	accepted := make(chan string, 1)
	serialLn.(*net.TCPListener).SetDeadline(time.Now().Add(time.Minute))
	go func() {
		c, err := serialLn.Accept()
		if err != nil {
			accepted <- err.Error()
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(time.Minute))
		line, _ := bufio.NewReader(c).ReadString('\n')
		accepted <- line
	}()
	h.exec("dev", `echo SERIAL-OVER-TCP > /dev/ttyS1`, time.Minute)
	if line := <-accepted; !strings.Contains(line, "SERIAL-OVER-TCP") {
		t.Errorf("serial over tcp: got %q", line)
	}

	// The empty cdrom, then a medium put in while the guest runs. The
	// first read after a change is an error (the guest learns of it).
	expect("empty cdrom", wait("[ -b /dev/sr0 ]")+`head -c 4 /dev/sr0 >/dev/null 2>&1 && echo HAS-MEDIUM || echo NO-MEDIUM`, "NO-MEDIUM")
	h.OK("", "change-media", "dev", "sdb", medium)
	expect("cdrom after change-media", wait(`head -c 17 /dev/sr0 2>/dev/null | grep -q CDROM-MEDIUM-MARK`)+`head -c 17 /dev/sr0`, "CDROM-MEDIUM-MARK")
	// A medium that cannot be opened changes nothing: the guest still
	// reads the one it has.
	h.fails("disk sdb source "+filepath.Join(h.top, "missing.iso"), "change-media", "dev", "sdb", filepath.Join(h.top, "missing.iso"))
	expect("cdrom after a failed change-media", `head -c 17 /dev/sr0`, "CDROM-MEDIUM-MARK")
	h.OK("", "change-media", "dev", "sdb", "--eject")
	expect("cdrom after eject", wait(`! head -c 4 /dev/sr0 >/dev/null 2>&1`)+`head -c 4 /dev/sr0 >/dev/null 2>&1 && echo HAS-MEDIUM || echo NO-MEDIUM`, "NO-MEDIUM")

	// The watchdog: armed from the guest without a driver (its registers
	// by sysfs and devmem); its action pauses the guest.
	h.exec("dev", `d=$(grep -l 0x25ab /sys/bus/pci/devices/*/device); d=${d%/device}; bar=$(head -1 $d/resource | awk '{print $1}')
printf '\007' | dd of=$d/config bs=1 seek=4 count=1 conv=notrunc 2>/dev/null
devmem $((bar+0xc)) 16 0x80; devmem $((bar+0xc)) 16 0x86; devmem $bar 32 2000
devmem $((bar+0xc)) 16 0x80; devmem $((bar+0xc)) 16 0x86; devmem $((bar+4)) 32 2000
printf '\002' | dd of=$d/config bs=1 seek=$((0x68)) count=1 conv=notrunc 2>/dev/null; echo armed`, time.Minute)
	st := h.waitState("dev", "paused", 2*time.Minute)
	if st.Reason != "watchdog" {
		t.Errorf("watchdog: paused (%s); want paused (watchdog)", st.Reason)
	}
	h.OK("", "destroy", "dev")
}

// writeMarked writes a 1 MiB image that starts with mark.
func writeMarked(t *testing.T, path, mark string) string {
	t.Helper()
	data := make([]byte, 1<<20)
	copy(data, mark)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startNBD serves image on the Unix socket sock with qemu-nbd until the
// test ends, and waits until it listens.
func startNBD(t *testing.T, sock, image string) {
	t.Helper()
	cmd := exec.Command("qemu-nbd", "--persistent", "--format=raw", "--socket="+sock, image)
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu-nbd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("qemu-nbd does not listen on %s", sock)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// memTotal reads MemTotal's kB from /proc/meminfo's text.
func memTotal(out string) int {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

// TestNinePShare: a host directory shared by 9p (<filesystem> with the
// default driver, QEMU's -fsdev local) is read and written from inside the
// guest. Debian's cloud kernel has no 9p, so this guest boots Debian's
// generic kernel (build/guest-generic).
func TestNinePShare(t *testing.T) {
	t.Parallel()
	dir, err := testenv.GenericGuest()
	if err != nil {
		t.Fatal(err)
	}
	h := newHost(t)
	share := filepath.Join(h.top, "ninep")
	if err := os.MkdirAll(share, 0o755); err != nil {
		t.Fatal(err)
	}
	// QEMU runs as an unprivileged uid and opens files in the share as it.
	if err := os.Chmod(share, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(share, "hello.txt"), []byte("HELLO-OVER-9P\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := guest{name: "ninep", kernelDir: dir,
		devices: `<filesystem type='mount' accessmode='mapped'><source dir='` + share + `'/><target dir='hostshare'/></filesystem>`}
	h.boot(g)
	out, rc := h.exec("ninep", `mount -t 9p -o trans=virtio,version=9p2000.L hostshare /mnt && cat /mnt/hello.txt && echo WRITTEN-OVER-9P > /mnt/back.txt && sync`, time.Minute)
	if rc != 0 || !strings.Contains(out, "HELLO-OVER-9P") {
		t.Fatalf("9p: exit %d, output %q; want the host's file", rc, out)
	}
	if data, err := os.ReadFile(filepath.Join(share, "back.txt")); err != nil || string(data) != "WRITTEN-OVER-9P\n" {
		t.Errorf("9p: the guest's file on the host: %q, %v", data, err)
	}
	h.OK("", "destroy", "ninep")
}
