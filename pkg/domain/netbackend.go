package domain

import (
	"errors"
	"fmt"
)

// NetBackend is how QEMU's NIC reaches minivirt's own network (netstack).
type NetBackend string

const (
	// BackendVhostUser is a vhost-user device served by the supervisor:
	// the guest's virtqueues are read and written in its RAM, shared with
	// the supervisor, with the offloads the stack honours. The default.
	BackendVhostUser NetBackend = "vhost-user"
	// BackendStream is QEMU's -netdev stream: every frame crosses a
	// socket through QEMU, with no offloads. The fallback.
	BackendStream NetBackend = "stream"
)

// Valid reports whether b is a backend minivirt has.
func (b NetBackend) Valid() bool { return b == BackendVhostUser || b == BackendStream }

// NetBackend returns the backend minivirt's network uses for the domain
// and, when it is not vhost-user, why: vhost-user needs the guest's RAM in
// shared memory with a descriptor, and a definition may keep it private.
func (d *Domain) NetBackend() (NetBackend, string) {
	if b := NetBackend(d.Ext.Backend); b == BackendStream {
		return BackendStream, "the definition asks for it (<vmchannels backend='stream'>)"
	}
	if why := d.privateMemory(); why != "" {
		return BackendStream, "vhost-user needs the guest's memory shared, and " + why
	}
	return BackendVhostUser, ""
}

// vhostUser reports whether the domain's netstack runs on vhost-user.
func (d *Domain) vhostUser() bool {
	if d.Network() != NetworkNetstack || !(d.NeedsNetwork() || d.Ext.Network != "") {
		return false
	}
	b, _ := d.NetBackend()
	return b == BackendVhostUser
}

// privateMemory says what keeps the guest's RAM from being shared with
// another process by descriptor, or "".
func (d *Domain) privateMemory() string {
	if b := d.MemoryBacking; b != nil {
		if b.MemoryAccess != nil && b.MemoryAccess.Mode == "private" {
			return "<memoryBacking><access mode='private'/> keeps it private"
		}
		if s := b.MemorySource; s != nil && s.Type == "anonymous" {
			return "<memoryBacking><source type='anonymous'/> has no descriptor to share it by"
		}
	}
	if d.CPU != nil && d.CPU.Numa != nil {
		for i, c := range d.CPU.Numa.Cell {
			if c.MemAccess == "private" {
				return fmt.Sprintf("NUMA cell %d has memAccess='private'", i)
			}
		}
	}
	for i, dimm := range d.DIMMs() {
		if dimm.Shared != nil && !*dimm.Shared {
			return fmt.Sprintf("memory device %d has <access mode='private'/>", i)
		}
	}
	return ""
}

func (ck *checker) validateBackend() error {
	d := ck.d
	for _, nic := range d.Devices.Interfaces {
		if s := nic.Source; s != nil && s.VHostUser != nil && d.Ext.Network == NetworkNetstack && len(d.Ext.VMChannels) > 0 {
			return errors.New("interface type='vhostuser' beside minivirt's vmchannels: this is minivirt's export for libvirt; define the domain minivirt exported instead")
		}
	}
	if b := NetBackend(ck.d.Ext.Backend); b != "" && !b.Valid() {
		return fmt.Errorf("vmchannels backend %q: must be %s or %s; leave it out for vhost-user where the guest's memory can be shared, else stream", b, BackendVhostUser, BackendStream)
	}
	if ck.d.Ext.Backend != "" && ck.d.Network() != NetworkNetstack {
		return fmt.Errorf("vmchannels backend %q: only minivirt's own network (netstack) has one; remove it or use network='netstack'", ck.d.Ext.Backend)
	}
	return nil
}
