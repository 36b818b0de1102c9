package qga

import (
	"context"
	"fmt"
)

// OSInfo is the guest's operating system (guest-get-osinfo): on Linux the
// fields of os-release(5) and uname(2). An agent leaves out what it does
// not know.
type OSInfo struct {
	ID            string `json:"id,omitempty"`
	Name          string `json:"name,omitempty"`
	PrettyName    string `json:"pretty-name,omitempty"`
	Version       string `json:"version,omitempty"`
	VersionID     string `json:"version-id,omitempty"`
	Variant       string `json:"variant,omitempty"`
	VariantID     string `json:"variant-id,omitempty"`
	KernelRelease string `json:"kernel-release,omitempty"`
	KernelVersion string `json:"kernel-version,omitempty"`
	Machine       string `json:"machine,omitempty"`
}

// User is one user logged in to the guest (guest-get-users).
type User struct {
	Name string `json:"user"`
	// Domain is the user's Windows domain; empty on other guests.
	Domain string `json:"domain,omitempty"`
	// LoginTime is when the user's first session began, in seconds
	// since the epoch.
	LoginTime float64 `json:"login-time"`
}

// Filesystem is one mounted filesystem of the guest (guest-get-fsinfo).
type Filesystem struct {
	Name       string `json:"name"` // the device, e.g. vda1 or dm-0
	Mountpoint string `json:"mountpoint"`
	Type       string `json:"type"`
	// UsedBytes and TotalBytes are nil when the agent cannot tell
	// (qemu-ga before 5.0, or a filesystem statvfs fails on).
	UsedBytes  *uint64 `json:"used-bytes,omitempty"`
	TotalBytes *uint64 `json:"total-bytes,omitempty"`
	Disks      []Disk  `json:"disk"`
}

// Disk is one disk a filesystem lives on, as the guest addresses it.
type Disk struct {
	BusType string     `json:"bus-type"` // e.g. virtio, scsi, sata
	PCI     PCIAddress `json:"pci-controller"`
	Bus     int        `json:"bus"`
	Target  int        `json:"target"`
	Unit    int        `json:"unit"`
	Serial  string     `json:"serial,omitempty"`
	Dev     string     `json:"dev,omitempty"` // e.g. /dev/vda1
}

// PCIAddress is the PCI address of a disk's controller in the guest.
type PCIAddress struct {
	Domain   int `json:"domain"`
	Bus      int `json:"bus"`
	Slot     int `json:"slot"`
	Function int `json:"function"`
}

// Interface is one network interface of the guest
// (guest-network-get-interfaces).
type Interface struct {
	Name      string      `json:"name"`
	MAC       string      `json:"hardware-address,omitempty"`
	Addresses []IPAddress `json:"ip-addresses,omitempty"`
}

// IPAddress is one address of an interface.
type IPAddress struct {
	Type    string `json:"ip-address-type"` // "ipv4" or "ipv6"
	Address string `json:"ip-address"`
	Prefix  int    `json:"prefix"`
}

// OSInfo returns the guest's operating system (guest-get-osinfo, qemu-ga
// 2.10 and later).
func (c *Client) OSInfo(ctx context.Context) (OSInfo, error) {
	var info OSInfo
	err := c.Run(ctx, "guest-get-osinfo", nil, &info)
	return info, err
}

// HostName returns the guest's host name (guest-get-host-name).
func (c *Client) HostName(ctx context.Context) (string, error) {
	var reply struct {
		HostName string `json:"host-name"`
	}
	err := c.Run(ctx, "guest-get-host-name", nil, &reply)
	return reply.HostName, err
}

// Users returns the users logged in to the guest (guest-get-users); none is
// an empty slice.
func (c *Client) Users(ctx context.Context) ([]User, error) {
	return list[User](ctx, c, "guest-get-users")
}

// FSInfo returns the guest's mounted filesystems (guest-get-fsinfo).
func (c *Client) FSInfo(ctx context.Context) ([]Filesystem, error) {
	return list[Filesystem](ctx, c, "guest-get-fsinfo")
}

// NetworkInterfaces returns the guest's network interfaces with their
// addresses (guest-network-get-interfaces).
func (c *Client) NetworkInterfaces(ctx context.Context) ([]Interface, error) {
	return list[Interface](ctx, c, "guest-network-get-interfaces")
}

// list runs a command whose value is a list: none is an empty slice.
func list[T any](ctx context.Context, c *Client, command string) ([]T, error) {
	out := []T{}
	if err := c.Run(ctx, command, nil, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// The modes of Shutdown.
const (
	ModePowerdown = "powerdown"
	ModeReboot    = "reboot"
	ModeHalt      = "halt"
)

// Shutdown asks the guest to power down, reboot or halt (guest-shutdown
// with mode). qemu-ga answers only when it cannot: Shutdown returns an
// *Error for a refusal, and nil when none came within RefusalWait (or
// before ctx ended, or the channel closed). That the guest then goes down
// the caller sees by other means: the domain's state.
func (c *Client) Shutdown(ctx context.Context, mode string) error {
	switch mode {
	case ModePowerdown, ModeReboot, ModeHalt:
	default:
		return fmt.Errorf("guest-shutdown mode %q: give %s, %s or %s", mode, ModePowerdown, ModeReboot, ModeHalt)
	}
	return c.Run(ctx, "guest-shutdown", map[string]string{"mode": mode}, nil)
}
