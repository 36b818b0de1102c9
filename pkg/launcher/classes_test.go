package launcher

import (
	"strings"
	"testing"

	"github.com/minivirt/minivirt/pkg/domain"
)

// classSample is a domain that holds one element of the README's table:
// top-level elements, an <os> (empty: direct kernel boot), devices; and
// what shows the class: for ActedOn an argument QEMU gets, for Kept a word
// of the warnings, for the refusals a word of the error.
type classSample struct {
	top, os, devices, want string
}

// classSamples has one sample per row of domain.Elements.
var classSamples = map[string]classSample{
	"name, uuid, title":              {top: `<title>T</title>`, want: "guest=t,debug-threads=on"},
	"memory, currentMemory":          {top: `<currentMemory unit='MiB'>96</currentMemory>`, want: "virtio-balloon-pci,id=balloon0"},
	"maxMemory, memory model='dimm'": {top: `<maxMemory slots='4' unit='MiB'>1024</maxMemory>`, devices: `<memory model='dimm'><target><size unit='MiB'>64</size></target></memory>`, want: "pc-dimm,node=0,memdev=memdimm0,id=dimm0"},
	"memoryBacking source, access, hugepages, locked, nosharepages, allocation, discard": {top: `<memoryBacking><source type='memfd'/><access mode='shared'/><locked/></memoryBacking>`, want: "memory-backend-memfd,id=pc.ram,size=128M,share=on"},
	"cpu numa cells":                     {top: `<vcpu>2</vcpu><cpu><numa><cell id='0' cpus='0' memory='64' unit='MiB'/><cell id='1' cpus='1' memory='64' unit='MiB'/></numa></cpu>`, want: "node,nodeid=1,memdev=ram-node1,cpus=1"},
	"vcpu (current, placement='static')": {top: `<vcpu current='1'>2</vcpu>`, want: "1,maxcpus=2"},
	"iothreads, iothreadids, disk and controller driver iothread":           {top: `<iothreads>1</iothreads>`, devices: `<disk type='file'><driver name='qemu' iothread='1'/><source file='/d'/><target dev='vda'/></disk>`, want: "iothread=iothread1"},
	"sysinfo type smbios with os smbios mode='sysinfo', sysinfo type fwcfg": {top: `<sysinfo type='smbios'><system><entry name='manufacturer'>Acme</entry></system></sysinfo>`, os: `<os><kernel>/k</kernel><smbios mode='sysinfo'/></os>`, want: "type=1,manufacturer=Acme"},
	"genid":                             {top: `<genid/>`, want: "vmgenid,guid=auto,id=vmgenid0"},
	"os type (arch x86_64, machine)":    {os: `<os><type arch='x86_64' machine='pc'>hvm</type><kernel>/k</kernel></os>`, want: "pc"},
	"os kernel, initrd, cmdline":        {os: `<os><kernel>/k</kernel><cmdline>console=ttyS0</cmdline></os>`, want: "console=ttyS0"},
	"os boot dev, bootmenu":             {os: `<os><boot dev='fd'/><boot dev='hd'/></os>`, devices: `<disk type='file'><source file='/d'/><target dev='vda'/></disk>`, want: "order=ac"},
	"boot order on a disk or interface": {os: `<os/>`, devices: `<disk type='file'><source file='/d'/><target dev='vda'/><boot order='2'/></disk>`, want: "bootindex=2"},
	"nothing to boot (no kernel, disk, firmware or network boot)":                                    {os: `<os/>`, want: "nothing to boot"},
	"os firmware='efi', loader, nvram":                                                               {os: `<os firmware='efi'/>`, want: "if=pflash,format=raw,unit=1,file=/var/lib/minivirt/nvram/t_VARS.fd"},
	"features acpi, apic, pae, vmport, smm":                                                          {top: `<features><acpi/><smm state='on'/></features>`, want: "q35,smm=on"},
	"cpu mode, model, topology, feature":                                                             {top: `<vcpu>2</vcpu><cpu><topology sockets='1' cores='2' threads='1'/></cpu>`, want: "2,sockets=1,cores=2,threads=1"},
	"clock offset utc, localtime, absolute; timer rtc/pit/hpet/kvmclock":                             {top: `<clock offset='absolute' start='1262304000'/>`, want: "base=2010-01-01T00:00:00"},
	"pm suspend-to-mem, suspend-to-disk":                                                             {top: `<pm><suspend-to-mem enabled='no'/></pm>`, want: "ICH9-LPC.disable_s3=1"},
	"on_poweroff, on_reboot, on_crash":                                                               {top: `<on_reboot>destroy</on_reboot>`, want: "-no-reboot"},
	"disk type file and block, device disk, cdrom, floppy":                                           {devices: `<disk type='file' device='floppy'><source file='/f.img'/><target dev='fda'/></disk>`, want: "floppy,unit=0,drive=drive-fda,id=fda"},
	"disk type network: nbd, http, https, ftp, ftps, iscsi":                                          {devices: `<disk type='network'><source protocol='nbd' name='e'><host transport='unix' socket='/run/nbd.sock'/></source><target dev='vda'/></disk>`, want: "file.driver=nbd,file.server.type=unix,file.server.path=/run/nbd.sock,file.export=e,format=raw,if=none,id=drive-vda,auto-read-only=off"},
	"empty cdrom and floppy, target tray":                                                            {devices: `<disk type='file' device='cdrom'><target dev='sdb' bus='sata' tray='open'/></disk>`, want: "if=none,id=drive-sdb,readonly=on,media=cdrom"},
	"backingStore":                                                                                   {devices: `<disk type='file'><driver name='qemu' type='qcow2'/><source file='/d'/><backingStore/><target dev='vda'/></disk>`, want: "file=/d,format=qcow2,if=none,id=drive-vda"},
	"disk driver type, cache, io, discard, detect_zeroes, error_policy, copy_on_read":                {devices: `<disk type='file'><driver name='qemu' copy_on_read='on'/><source file='/d'/><target dev='vda'/></disk>`, want: "copy-on-read=on"},
	"disk driver queues, queue_size, event_idx, ioeventfd":                                           {devices: `<disk type='file'><driver name='qemu' queues='2' event_idx='off'/><source file='/d'/><target dev='vda'/></disk>`, want: "num-queues=2,event_idx=off"},
	"disk iotune, blockio, wwn, vendor, product, rotation_rate":                                      {devices: `<disk type='file'><source file='/d'/><target dev='vda'/><iotune><total_bytes_sec>1000</total_bytes_sec></iotune></disk>`, want: "throttling.bps-total=1000"},
	"disk readonly, shareable, serial, transient":                                                    {devices: `<disk type='file'><source file='/d'/><target dev='vda'/><transient/></disk>`, want: "snapshot=on"},
	"controller scsi (virtio-scsi, lsilogic)":                                                        {devices: `<controller type='scsi' model='virtio-scsi'/><disk type='file'><source file='/d'/><target dev='sda' bus='scsi'/></disk>`, want: "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=drive-sda,id=sda"},
	"interface type='user' (mac, model, boot, link up, portForward tcp)":                             {devices: `<interface type='user'><mac address='52:54:00:00:00:01'/></interface>`, want: "mac=52:54:00:00:00:01"},
	"interface type='network'":                                                                       {devices: `<interface type='network'><source network='default'/></interface>`, want: "user,id=net0"},
	"interface types bridge, direct, ethernet, hostdev, vhostuser, vdpa, udp, mcast, server, client": {devices: `<interface type='bridge'><source bridge='br0'/></interface>`, want: "interface type bridge"},
	"vmchannel (minivirt's metadata, or <interface type='vmchannel'>)":                               {devices: `<interface type='vmchannel'><source port='600'/><target path='/run/s.sock'/></interface>`, want: "vhost-user,id=net0"},
	"forward (minivirt's metadata)":                                                                  {top: `<metadata><vmchannels xmlns='https://github.com/minivirt/minivirt/xmlns/domain/1'><forward port='22' listen='127.0.0.1:2222'/></vmchannels></metadata>`, want: "vhost-user,id=net0"},
	"channel unix guestfwd":                                                                          {devices: `<interface type='user'/><channel type='unix'><source mode='connect' path='/run/s.sock'/><target type='guestfwd' address='10.0.2.4' port='601'/></channel>`, want: "guestfwd="},
	"channel virtio: unix bind (source path optional) or connect, pty, tcp, udp, dev, file, null":    {devices: `<channel type='tcp'><source mode='bind' host='127.0.0.1' service='4555'/><target type='virtio' name='x.y'/></channel>`, want: "socket,id=channel0,host=127.0.0.1,port=4555,server=on,wait=off"},
	"serial, console: pty, file, unix, tcp, udp, dev, null; log file; serial target isa-serial, pci-serial, isa-debug": {devices: `<serial type='pty'/><serial type='udp'><source mode='connect' host='127.0.0.1' service='5000'/><target type='pci-serial'/></serial>`, want: "pci-serial,chardev=serial1,id=serial1"},
	"controller usb, pci (pcie-root-port), virtio-serial, sata, ide, fdc":                                              {devices: `<controller type='usb' model='qemu-xhci'/>`, want: "qemu-xhci,id=usb0"},
	"memballoon virtio, rng virtio, panic":                                                                             {devices: `<rng model='virtio'><backend model='builtin'/></rng>`, want: "rng-builtin,id=objrng0"},
	"watchdog i6300esb, ib700, itco with its action":                                                                   {devices: `<watchdog model='ib700' action='pause'/>`, want: "watchdog=pause"},
	"filesystem type mount, driver path (9p) or virtiofs":                                                              {devices: `<filesystem type='mount'><driver type='virtiofs'/><source dir='/srv'/><target dir='share'/></filesystem>`, want: "vhost-user-fs-pci,id=fs0,chardev=chr-vu-fs0,tag=share"},
	"qemu:commandline": {top: `<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-no-hpet'/></qemu:commandline>`, want: "-no-hpet"},
	"description, metadata of other applications":                  {top: `<description>D</description>`, want: "<description>"},
	"cputune, numatune, memtune, blkiotune, resource, vcpu cpuset": {top: `<cputune><shares>2048</shares></cputune>`, want: "<cputune>"},
	"video, input, sound":                       {devices: `<video><model type='virtio'/></video>`, want: "virtio-vga,id=video0"},
	"graphics, audio, redirdev type='spicevmc'": {devices: `<graphics type='vnc'/>`, want: "<graphics>"},
	"alias (user aliases)":                      {devices: `<disk type='file'><source file='/d'/><target dev='vda'/><alias name='ua-x'/></disk>`, want: "<alias>"},
	"seclabel type='none'":                      {top: `<seclabel type='none'/>`, want: "<seclabel type='none'>"},
	"seclabel type dynamic or static":           {top: `<seclabel type='dynamic' model='selinux'/>`, want: `seclabel type "dynamic"`},
	"os loader secure='yes', firmware feature secure-boot or enrolled-keys":                                                    {os: `<os firmware='efi'><loader secure='yes'/></os>`, want: "Secure Boot"},
	"address type pci (root bus), type drive, type virtio-serial":                                                              {devices: `<disk type='file'><source file='/d'/><target dev='vda'/><address type='pci' domain='0' bus='0' slot='7' function='0'/></disk>`, want: "addr=0x07.0"},
	"address of other types or buses (ccw, usb, isa, a PCI bridge)":                                                            {devices: `<disk type='file'><source file='/d'/><target dev='vda'/><address type='pci' domain='0' bus='1' slot='1' function='0'/></disk>`, want: "root PCI bus only"},
	"hostdev, tpm, vsock, smartcard, parallel, redirdev type usb, shmem, iommu, memory models other than dimm, launchSecurity": {devices: `<tpm model='tpm-tis'><backend type='emulator'/></tpm>`, want: "<tpm> not supported by minivirt"},
	"any other element or attribute libvirt defines that minivirt does not act on":                                             {devices: `<disk type='file'><source file='/d'/><target dev='vda'/><geometry cyls='16383' heads='16' secs='63'/></disk>`, want: "<geometry> not supported by minivirt"},
	"any element or attribute libvirtxml does not know, or a second <name>":                                                    {devices: `<disk type='file' colour='red'><source file='/d'/><target dev='vda'/></disk>`, want: "attribute colour"},
	"an invalid value (a relative path, an unknown model, a port out of range)":                                                {devices: `<disk type='file'><source file='d'/><target dev='vda'/></disk>`, want: "must be an absolute path"},
}

// TestElementClasses holds every row of the README's table to the code: a
// sample of the element is acted on (QEMU gets it), kept and said (define
// warns), refused at start (defined, and CheckStart names it) or refused at
// define, as the row says.
func TestElementClasses(t *testing.T) {
	for _, e := range domain.Elements {
		t.Run(e.Name, func(t *testing.T) {
			s, ok := classSamples[e.Name]
			if !ok {
				t.Fatal("no sample for this row of domain.Elements")
			}
			os := s.os
			if os == "" {
				os = `<os><kernel>/k</kernel></os>`
			}
			xml := `<domain type='qemu'><name>t</name><uuid>6c3b1f0e-8a4d-4f6b-9c2e-1d7a5b3e9f40</uuid><memory unit='MiB'>128</memory>` +
				s.top + os + `<devices>` + s.devices + `</devices></domain>`
			d, err := domain.Parse(strings.NewReader(xml))
			if err == nil {
				err = d.Validate()
			}
			if e.Class == domain.RefusedAtDefine {
				if err == nil || !strings.Contains(err.Error(), s.want) {
					t.Fatalf("define: %v; want a refusal naming %q", err, s.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("define: %v", err)
			}
			startErr := d.CheckStart()
			switch e.Class {
			case domain.RefusedAtStart:
				if startErr == nil || !strings.Contains(startErr.Error(), s.want) {
					t.Fatalf("start: %v; want a refusal naming %q", startErr, s.want)
				}
				if !strings.Contains(strings.Join(d.Warnings(), "\n"), s.want) {
					t.Fatalf("define does not say it: %q", d.Warnings())
				}
				return
			case domain.Kept:
				if startErr != nil {
					t.Fatalf("start: %v", startErr)
				}
				if !strings.Contains(strings.Join(d.Warnings(), "\n"), s.want) {
					t.Fatalf("warnings %q; want them to name %q", d.Warnings(), s.want)
				}
				return
			}
			if startErr != nil {
				t.Fatalf("start: %v", startErr)
			}
			p, err := Build(d, testEnv)
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if !contains(p.Argv, s.want) {
				t.Fatalf("QEMU does not get %q:\n%s", s.want, strings.Join(p.Argv, " "))
			}
		})
	}
	for name := range classSamples {
		found := false
		for _, e := range domain.Elements {
			found = found || e.Name == name
		}
		if !found {
			t.Errorf("sample %q: no such row in domain.Elements", name)
		}
	}
}

// contains reports whether an argument of argv contains s.
func contains(argv []string, s string) bool {
	for _, a := range argv {
		if strings.Contains(a, s) || a == s {
			return true
		}
	}
	return false
}
