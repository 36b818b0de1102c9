package launcher

import (
	"fmt"
	"path/filepath"

	"github.com/minivirt/minivirt/pkg/domain"
)

// VirtioFS is one virtiofs share: the supervisor starts a virtiofsd for it
// on Socket, a listening socket it creates, before QEMU connects to it.
type VirtioFS struct {
	domain.Share
	Socket string
	// Binary is the virtiofsd to run: the domain's <binary path>, else
	// QEMU's own (Debian's qemu-system-common).
	Binary string
	// Cache is virtiofsd's cache mode: none, always or auto (default).
	Cache string
	// XAttr passes extended attributes through (<binary xattr='on'>).
	XAttr bool
	// Sandbox is virtiofsd's: namespace (default) or chroot.
	Sandbox string
}

// DefaultVirtiofsd is QEMU's virtiofsd as Debian 12 installs it.
const DefaultVirtiofsd = "/usr/lib/qemu/virtiofsd"

// filesystems shares host directories with the guest: by 9p, which QEMU
// serves itself (-fsdev local), or by virtiofs, which a virtiofsd serves
// from the guest's shared memory.
func (b *builder) filesystems() error {
	d := b.d
	for i, fs := range d.Devices.Filesystems {
		s, ok := domain.ShareOf(fs)
		if !ok {
			return fmt.Errorf("filesystem %d: shares no host directory", i)
		}
		id := fmt.Sprintf("fs%d", i)
		addr := domain.PCIAddr(fs.Address)
		switch s.Driver {
		case "path":
			model := map[string]string{"passthrough": "passthrough", "mapped": "mapped-xattr", "squash": "none"}[s.AccessMode]
			fsdev := fmt.Sprintf("local,id=fsdev-%s,path=%s,security_model=%s", id, escapeOpt(s.Source), model)
			if s.ReadOnly {
				fsdev += ",readonly=on"
			}
			if fs.Driver != nil && fs.Driver.WRPolicy == "immediate" {
				fsdev += ",writeout=immediate"
			}
			b.add("-fsdev", fsdev, "-device", fmt.Sprintf("virtio-9p-pci,id=%s,fsdev=fsdev-%s,mount_tag=%s", id, id, escapeOpt(s.Tag))+addr)
		case "virtiofs":
			sock := filepath.Join(b.env.RunDir, id+".virtiofs.sock")
			if len(sock) > domain.MaxSocketPath {
				return fmt.Errorf("filesystem %d: the socket minivirt would bind, %s, is %d bytes, over the %d a Unix socket allows; use a shorter --run-dir", i, sock, len(sock), domain.MaxSocketPath)
			}
			v := VirtioFS{Share: s, Socket: sock, Binary: DefaultVirtiofsd, Cache: "auto", Sandbox: "namespace"}
			if bin := fs.Binary; bin != nil {
				if bin.Path != "" {
					v.Binary = bin.Path
				}
				if bin.Cache != nil && bin.Cache.Mode != "" {
					v.Cache = bin.Cache.Mode
				}
				v.XAttr = bin.XAttr == "on"
				if bin.Sandbox != nil && bin.Sandbox.Mode == "chroot" {
					v.Sandbox = "chroot"
				}
			}
			b.p.VirtioFS = append(b.p.VirtioFS, v)
			queue := "1024"
			if fs.Driver != nil && fs.Driver.Queue != 0 {
				queue = fmt.Sprint(fs.Driver.Queue)
			}
			b.add("-chardev", fmt.Sprintf("socket,id=chr-vu-%s,path=%s", id, escapeOpt(sock)),
				"-device", fmt.Sprintf("vhost-user-fs-pci,id=%s,chardev=chr-vu-%s,tag=%s,queue-size=%s", id, id, escapeOpt(s.Tag), queue)+addr)
		}
	}
	return nil
}
