// Package domain is minivirt's domain model: libvirt's domain XML subset plus
// the vmchannel interface, read, normalised, validated and written back.
//
// The package does no I/O of its own: bytes go in, a model comes out, and the
// model is written back as minivirt's form or as libvirt's form.
package domain

import (
	"encoding/xml"
	"net/netip"
)

// Domain is one virtual machine definition.
//
// Elements minivirt does not act on (features, clock, cpu, graphics, ...) are
// kept verbatim in Extra (and in Devices.Extra) and written back unchanged.
type Domain struct {
	XMLName    xml.Name   `xml:"domain"`
	Type       string     `xml:"type,attr"`
	ExtraAttrs []xml.Attr `xml:",any,attr"`
	Name       string     `xml:"name"`
	UUID       string     `xml:"uuid,omitempty"`
	Memory     Memory     `xml:"memory"`
	VCPU       VCPU       `xml:"vcpu"`
	OS         OS         `xml:"os"`
	OnPoweroff string     `xml:"on_poweroff,omitempty"`
	OnReboot   string     `xml:"on_reboot,omitempty"`
	OnCrash    string     `xml:"on_crash,omitempty"`
	Devices    Devices    `xml:"devices"`
	Extra      []Raw      `xml:",any"`

	uuidGenerated bool
}

// Memory is the guest's memory. After Parse, KiB holds the size and Unit is
// "KiB", the way libvirt writes it back.
type Memory struct {
	Unit  string `xml:"unit,attr,omitempty"`
	Value string `xml:",chardata"`
	KiB   uint64 `xml:"-"`
}

// VCPU is the number of virtual CPUs.
type VCPU struct {
	ExtraAttrs []xml.Attr `xml:",any,attr"`
	Value      string     `xml:",chardata"`
	Count      int        `xml:"-"`
}

// OS says what to boot.
type OS struct {
	Type    OSType `xml:"type"`
	Kernel  string `xml:"kernel,omitempty"`
	Initrd  string `xml:"initrd,omitempty"`
	Cmdline string `xml:"cmdline,omitempty"`
	Extra   []Raw  `xml:",any"`
}

// OSType is <os><type arch="..." machine="...">hvm</type>.
type OSType struct {
	Arch    string `xml:"arch,attr,omitempty"`
	Machine string `xml:"machine,attr,omitempty"`
	Value   string `xml:",chardata"`
}

// Devices holds the devices minivirt acts on, and the rest verbatim.
type Devices struct {
	Emulator   string      `xml:"emulator,omitempty"`
	Disks      []Disk      `xml:"disk"`
	Interfaces []Interface `xml:"interface"`
	Channels   []Channel   `xml:"channel"`
	Serials    []CharDev   `xml:"serial"`
	Consoles   []CharDev   `xml:"console"`
	VMChannels *VMChannels `xml:"vmchannels"`
	Extra      []Raw       `xml:",any"`
}

// VMChannels is minivirt's <vmchannels network="..."/>: which user network
// carries the domain's vmchannels.
type VMChannels struct {
	Network string `xml:"network,attr"`
}

// Networks that can carry vmchannels.
const (
	// NetworkSlirp is QEMU's user network (libslirp) with one guestfwd rule
	// per channel; QEMU spawns minivirt's helper per guest connection.
	NetworkSlirp = "slirp"
	// NetworkNetstack is minivirt's own user network, a TCP/IP stack in the
	// supervisor: no process per connection, no NAT.
	NetworkNetstack = "netstack"
)

// Disk is a file-backed disk or cdrom.
type Disk struct {
	Type     string      `xml:"type,attr"`
	Device   string      `xml:"device,attr,omitempty"`
	Driver   *DiskDriver `xml:"driver"`
	Source   DiskSource  `xml:"source"`
	Target   DiskTarget  `xml:"target"`
	ReadOnly *struct{}   `xml:"readonly"`
}

// DiskDriver names the image format.
type DiskDriver struct {
	Name string `xml:"name,attr,omitempty"`
	Type string `xml:"type,attr,omitempty"`
}

// DiskSource is the image file.
type DiskSource struct {
	File string `xml:"file,attr"`
}

// DiskTarget is the guest-side name and bus.
type DiskTarget struct {
	Dev string `xml:"dev,attr"`
	Bus string `xml:"bus,attr,omitempty"`
}

// Interface is a network interface: type='user' (QEMU's user-mode network) or
// type='vmchannel' (minivirt's per-connection channel to a host Unix socket).
type Interface struct {
	Type   string           `xml:"type,attr"`
	MAC    *MAC             `xml:"mac"`
	Source *InterfaceSource `xml:"source"`
	Target *InterfaceTarget `xml:"target"`
	Model  *Model           `xml:"model"`
}

// MAC is <mac address="..."/>.
type MAC struct {
	Address string `xml:"address,attr"`
}

// Model is <model type="..."/>.
type Model struct {
	Type string `xml:"type,attr"`
}

// InterfaceSource is a vmchannel's guest-side address and port.
type InterfaceSource struct {
	Address string `xml:"address,attr,omitempty"`
	Port    string `xml:"port,attr,omitempty"`
}

// InterfaceTarget is a vmchannel's host-side socket and options.
type InterfaceTarget struct {
	Path           string `xml:"path,attr"`
	Proxy          string `xml:"proxy,attr,omitempty"`
	MaxConnections string `xml:"maxconnections,attr,omitempty"`
}

// Channel is libvirt's <channel>: a guestfwd channel (the same meaning as a
// vmchannel) or a virtio-serial port.
type Channel struct {
	Type   string        `xml:"type,attr"`
	Source ChannelSource `xml:"source"`
	Target ChannelTarget `xml:"target"`
}

// ChannelSource is the host-side Unix socket of a channel.
type ChannelSource struct {
	Mode string `xml:"mode,attr,omitempty"`
	Path string `xml:"path,attr"`
}

// ChannelTarget is the guest side of a channel.
type ChannelTarget struct {
	Type           string `xml:"type,attr"`
	Address        string `xml:"address,attr,omitempty"`
	Port           string `xml:"port,attr,omitempty"`
	Name           string `xml:"name,attr,omitempty"`
	Proxy          string `xml:"proxy,attr,omitempty"`
	MaxConnections string `xml:"maxconnections,attr,omitempty"`
}

// CharDev is a <serial> or <console>. minivirt always logs the first serial
// port and offers it through `minivirt console`.
type CharDev struct {
	Type   string         `xml:"type,attr"`
	Target *CharDevTarget `xml:"target"`
}

// CharDevTarget is <target type="..." port="..."/> of a serial or console.
type CharDevTarget struct {
	Type string `xml:"type,attr,omitempty"`
	Port string `xml:"port,attr,omitempty"`
}

// Raw is an element kept verbatim.
type Raw struct {
	XMLName xml.Name
	Attrs   []xml.Attr `xml:",any,attr"`
	Inner   string     `xml:",innerxml"`
}

// Proxy protocol choices for a vmchannel.
const (
	ProxyNone = ""
	ProxyV2   = "v2"
)

// VMChannel is one guest TCP address:port relayed to a host Unix socket, one
// host connection for every guest connection. It is derived from either an
// <interface type='vmchannel'> or a guestfwd <channel>.
type VMChannel struct {
	Address        netip.Addr
	Port           uint16
	Path           string
	Proxy          string // ProxyNone or ProxyV2
	MaxConnections int
}

// VirtioPort is a virtio-serial port whose host socket minivirt binds.
type VirtioPort struct {
	Name string
	Path string
}
