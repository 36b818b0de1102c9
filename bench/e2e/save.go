package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minivirt/minivirt/internal/testenv"
)

// saveRestoreFigures times `save` and `restore` of the tiny guest with 256
// MiB and 1 GiB, half of its memory filled with data no page of repeats
// (so the stream carries it), three rounds each.
func (b *bench) saveRestoreFigures() error {
	fmt.Printf("## save and restore\n\n")
	fmt.Printf("The tiny guest, half its memory filled (`minivirt-guest fill`, on a tmpfs), then `minivirt save` and `minivirt restore` (which returns when the guest runs again), %d rounds each, accel %s.\n\n", *saveReps, b.accel)
	fmt.Printf("| memory | save, median (s) | restore, median (s) | file (MB) | runs: save / restore (s) |\n|---|---:|---:|---:|---|\n")
	for _, mib := range []int{256, 1024} {
		name := fmt.Sprintf("sr%d", mib)
		e := b.env(name)
		xml := fmt.Sprintf(`<domain type='%s'><name>%s</name><memory unit='MiB'>%d</memory>
<os><kernel>%s</kernel><initrd>%s</initrd><cmdline>%s</cmdline></os><devices><vmchannels network='netstack'/></devices></domain>`,
			b.domainType, name, mib, b.kernel, b.initrd, b.cmdline())
		if err := b.mv(e, xml, "define", "-"); err != nil {
			return err
		}
		if err := b.mv(e, "", "start", name); err != nil {
			return err
		}
		if err := waitReady(filepath.Join(e.state, "logs", name+".log")); err != nil {
			return err
		}
		console := filepath.Join(e.run, name, "console.sock")
		if out, rc, err := testenv.ConsoleExec(console, fmt.Sprintf("mkdir -p /fill && mount -t tmpfs -o size=90%% fill /fill && minivirt-guest fill %d /fill/data", mib/2), 10*time.Minute); err != nil || rc != 0 {
			b.mv(e, "", "destroy", name)
			return fmt.Errorf("filling the guest: exit %d, %v: %s", rc, err, out)
		}
		file := filepath.Join(b.dir, name+".save")
		var saves, restores []time.Duration
		var size int64
		var runs []string
		for i := 0; i < *saveReps; i++ {
			t0 := time.Now()
			if err := b.mv(e, "", "save", name, file); err != nil {
				return err
			}
			saves = append(saves, time.Since(t0))
			if fi, err := os.Stat(file); err == nil {
				size = fi.Size()
			}
			t0 = time.Now()
			if err := b.mv(e, "", "restore", file); err != nil {
				return err
			}
			restores = append(restores, time.Since(t0))
			os.Remove(file)
			runs = append(runs, fmt.Sprintf("%.2f / %.2f", saves[i].Seconds(), restores[i].Seconds()))
		}
		b.mv(e, "", "destroy", name)
		fmt.Printf("| %d MiB | %.2f | %.2f | %d | %s |\n", mib, median(saves).Seconds(), median(restores).Seconds(), size>>20, strings.Join(runs, ", "))
	}
	fmt.Println()
	return nil
}
