package domain

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDomain checks parse + validate + marshal: no input panics, and every
// accepted definition writes back to text that reads back to the same text.
func FuzzDomain(f *testing.F) {
	for _, file := range examples(f) {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for i := 0; i < 4; i++ {
		f.Add([]byte(generated(i)))
	}
	// Compact, pretty, commented and namespaced forms, and virt-install's.
	for _, seed := range []string{
		`<domain type='kvm'><name>c</name><memory>65536</memory><os><kernel>/k</kernel></os><clock offset='utc'><timer name='rtc' tickpolicy='catchup'/></clock><cpu><topology sockets='1' cores='1' threads='1'/></cpu><pm><suspend-to-mem enabled='no'/></pm><devices><console type='pty'><target type='virtio'/></console></devices></domain>`,
		"<domain type='qemu'>\n  <!-- a comment -->\n  <name>p</name>\n  <memory unit='MiB'>64</memory>\n  <vcpu current='1'>2</vcpu>\n  <os firmware='efi'>\n    <boot dev='hd'/>\n  </os>\n  <devices>\n    <disk type='block'><source dev='/dev/loop0'/><target dev='vda'/><transient/></disk>\n  </devices>\n</domain>\n",
		`<?xml version='1.0' encoding='ISO-8859-1'?><domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><name>n</name><memory>65536</memory><metadata><app:x xmlns:app='urn:app'><app:y a='1'/></app:x><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1' network='netstack'><vmchannel port='600' path='/s'/></vmchannels></metadata><os><kernel>/k</kernel></os><qemu:commandline><qemu:arg value='-no-hpet'/><qemu:env name='A' value='b'/></qemu:commandline></domain>`,
	} {
		f.Add([]byte(seed))
	}
	if files, _ := filepath.Glob("testdata/corpus/*/*.xml"); len(files) > 0 {
		for _, file := range files {
			data, _ := os.ReadFile(file)
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(bytes.NewReader(data))
		if err != nil {
			return
		}
		_ = d.Warnings()
		if d.Validate() != nil {
			return
		}
		a, err := d.XML()
		if err != nil {
			t.Fatalf("XML of a valid domain: %v", err)
		}
		d2, err := Parse(bytes.NewReader(a))
		if err != nil {
			t.Fatalf("own output does not parse: %v\n%s", err, a)
		}
		if err := d2.Validate(); err != nil {
			t.Fatalf("own output does not validate: %v\n%s", err, a)
		}
		b, err := d2.XML()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("round trip differs:\n%s\n---\n%s", a, b)
		}
		if _, err := d.LibvirtXML(testNetwork); err != nil && !errors.Is(err, ErrNotMovable) {
			t.Fatalf("LibvirtXML: %v", err)
		}
	})
}
