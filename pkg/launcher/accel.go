package launcher

import (
	"bytes"
	"os"
	"regexp"
	"sync"
)

// virtFlags is compiled on first use: see domain's lazyRegexp.
var virtFlags = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?m)^flags\s*:.*\b(vmx|svm)\b`) })

// DetectKVM decides whether KVM is usable: /dev/kvm must open read-write AND
// the CPU must show vmx or svm. A /dev/kvm that opens is not enough: on PVM
// hosts (no vmx/svm) it creates VMs, but a stock kernel hangs under it.
// MINIVIRT_ACCEL=kvm or tcg overrides the guess.
func DetectKVM(getenv func(string) string) (bool, string) {
	switch getenv("MINIVIRT_ACCEL") {
	case "kvm":
		return true, ""
	case "tcg":
		return false, "MINIVIRT_ACCEL=tcg"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false, "/dev/kvm: " + errText(err)
	}
	f.Close()
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false, "/proc/cpuinfo: " + errText(err)
	}
	return cpuHasVirt(cpuinfo)
}

func cpuHasVirt(cpuinfo []byte) (bool, string) {
	if virtFlags().Match(cpuinfo) {
		return true, ""
	}
	if bytes.Contains(cpuinfo, []byte("flags")) {
		return false, "/dev/kvm opens but the CPU shows neither vmx nor svm; set MINIVIRT_ACCEL=kvm if KVM does work here"
	}
	return false, "no CPU flags in /proc/cpuinfo"
}

func errText(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return err.Error()
}
