package domain

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"strconv"
	"strings"
)

// Defaults of the user-mode network, as QEMU's user network (libslirp) has them.
var (
	// UserNet is the guest network of a user-mode NIC.
	UserNet = netip.MustParsePrefix("10.0.2.0/24")
	// DefaultVMChannelAddress is where a vmchannel listens when no address is given.
	DefaultVMChannelAddress = netip.MustParseAddr("10.0.2.4")
	// GatewayAddress is the user network's gateway (and, for QEMU's, the host).
	GatewayAddress = netip.MustParseAddr("10.0.2.2")
	// GuestAddress is the address the user network gives the guest by DHCP.
	GuestAddress = netip.MustParseAddr("10.0.2.15")
)

// Parse reads one domain definition and normalises it: a uuid is generated
// when absent, memory is converted to KiB, and libvirt's defaults are made
// explicit so that writing it back and reading it again gives the same text.
// Parse checks syntax and units; Validate checks the rules.
func Parse(r io.Reader) (*Domain, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("XML: empty document")
	}
	var d Domain
	dec := xml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&d); err != nil {
		return nil, xmlError(err)
	}
	// Anything after the root element but white space is a second document.
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, xmlError(err)
		}
		switch t := tok.(type) {
		case xml.CharData:
			if len(bytes.TrimSpace(t)) != 0 {
				return nil, errors.New("XML: text after the <domain> element")
			}
		case xml.Comment, xml.ProcInst, xml.Directive:
		default:
			return nil, errors.New("XML: more than one root element; give one <domain>")
		}
	}
	if err := d.normalise(); err != nil {
		return nil, err
	}
	return &d, nil
}

func xmlError(err error) error {
	var se *xml.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("XML: line %d: %s", se.Line, se.Msg)
	}
	var ue xml.UnmarshalError
	if errors.As(err, &ue) {
		return fmt.Errorf("XML: %s", string(ue))
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("XML: unexpected end of document")
	}
	return fmt.Errorf("XML: %w", err)
}

func (d *Domain) normalise() error {
	if d.UUID == "" {
		d.UUID, d.uuidGenerated = NewUUID(), true
	} else {
		u, err := canonicalUUID(d.UUID)
		if err != nil {
			return err
		}
		d.UUID = u
	}
	if err := d.Memory.normalise(); err != nil {
		return err
	}
	v := strings.TrimSpace(d.VCPU.Value)
	if v == "" {
		v = "1"
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("vcpu %q: not a number", d.VCPU.Value)
	}
	d.VCPU.Value, d.VCPU.Count = strconv.Itoa(n), n

	d.OS.Type.Value = strings.TrimSpace(d.OS.Type.Value)
	if d.OS.Type.Value == "" {
		d.OS.Type.Value = "hvm"
	}
	if d.OS.Type.Arch == "" {
		d.OS.Type.Arch = "x86_64"
	}
	d.OS.Kernel = strings.TrimSpace(d.OS.Kernel)
	d.OS.Initrd = strings.TrimSpace(d.OS.Initrd)
	d.Devices.Emulator = strings.TrimSpace(d.Devices.Emulator)
	setDefault(&d.OnPoweroff, "destroy")
	setDefault(&d.OnReboot, "restart")
	setDefault(&d.OnCrash, "destroy")

	for i := range d.Devices.Interfaces {
		nic := &d.Devices.Interfaces[i]
		switch nic.Type {
		case "user":
			if nic.Model == nil {
				nic.Model = &Model{Type: "virtio"}
			}
		case "vmchannel":
			if nic.Source != nil && nic.Source.Address == "" {
				nic.Source.Address = DefaultVMChannelAddress.String()
			}
		}
	}
	for i := range d.Devices.Channels {
		ch := &d.Devices.Channels[i]
		if ch.Source.Mode == "" {
			switch ch.Target.Type {
			case "guestfwd":
				ch.Source.Mode = "connect"
			case "virtio":
				ch.Source.Mode = "bind"
			}
		}
	}
	return nil
}

func setDefault(s *string, def string) {
	*s = strings.TrimSpace(*s)
	if *s == "" {
		*s = def
	}
}

// UUIDGenerated reports whether Parse made up the uuid because the XML had none.
func (d *Domain) UUIDGenerated() bool { return d.uuidGenerated }

// NewUUID returns a random (version 4) UUID in its canonical form.
func NewUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error()) // crypto/rand never fails on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b)
}

func formatUUID(b [16]byte) string {
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// canonicalUUID accepts the forms libvirt accepts (with or without dashes,
// either case) and returns the lower-case dashed form.
func canonicalUUID(s string) (string, error) {
	h := strings.ReplaceAll(strings.TrimSpace(s), "-", "")
	var b [16]byte
	if len(h) != 32 {
		return "", fmt.Errorf("uuid %q: must be 32 hex digits, as in 0b6c8e5a-3f1d-4c2e-9a7b-5d4e3f2a1b0c", s)
	}
	if _, err := hex.Decode(b[:], []byte(h)); err != nil {
		return "", fmt.Errorf("uuid %q: must be 32 hex digits, as in 0b6c8e5a-3f1d-4c2e-9a7b-5d4e3f2a1b0c", s)
	}
	return formatUUID(b), nil
}

// memoryUnits are libvirt's scaled-integer units, in bytes.
var memoryUnits = map[string]uint64{
	"b": 1, "bytes": 1,
	"KB": 1e3, "k": 1 << 10, "K": 1 << 10, "KiB": 1 << 10,
	"MB": 1e6, "M": 1 << 20, "MiB": 1 << 20,
	"GB": 1e9, "G": 1 << 30, "GiB": 1 << 30,
	"TB": 1e12, "T": 1 << 40, "TiB": 1 << 40,
	"PB": 1e15, "P": 1 << 50, "PiB": 1 << 50,
	"EB": 1e18, "E": 1 << 60, "EiB": 1 << 60,
}

func (m *Memory) normalise() error {
	unit := strings.TrimSpace(m.Unit)
	if unit == "" {
		unit = "KiB"
	}
	scale, ok := memoryUnits[unit]
	if !ok {
		return fmt.Errorf("memory unit %q: unknown; use KiB, MiB or GiB (or b, KB, MB, GB, TiB, ...)", m.Unit)
	}
	v := strings.TrimSpace(m.Value)
	if v == "" {
		return errors.New("memory: missing; give <memory unit='MiB'>256</memory>")
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return fmt.Errorf("memory %q: must be a whole number", m.Value)
	}
	if n > math.MaxUint64/scale {
		return fmt.Errorf("memory %s %s: too large", v, unit)
	}
	bytes := n * scale
	m.KiB = bytes / 1024
	if bytes%1024 != 0 { // libvirt rounds up to whole KiB
		m.KiB++
	}
	m.Unit, m.Value = "KiB", strconv.FormatUint(m.KiB, 10)
	return nil
}

// MiB returns the memory size in MiB, rounded up, as QEMU's -m takes it.
func (m Memory) MiB() uint64 { return (m.KiB + 1023) / 1024 }

// VMChannels returns every vmchannel of the domain, from <interface
// type='vmchannel'> and from guestfwd <channel> elements, in that order.
// Call it on a validated domain.
func (d *Domain) VMChannels() []VMChannel {
	var out []VMChannel
	for _, nic := range d.Devices.Interfaces {
		if nic.Type != "vmchannel" || nic.Source == nil || nic.Target == nil {
			continue
		}
		out = append(out, vmchannel(nic.Source.Address, nic.Source.Port, nic.Target.Path, nic.Target.Proxy, nic.Target.MaxConnections))
	}
	for _, ch := range d.Devices.Channels {
		if ch.Target.Type != "guestfwd" {
			continue
		}
		t := ch.Target
		out = append(out, vmchannel(t.Address, t.Port, ch.Source.Path, t.Proxy, t.MaxConnections))
	}
	return out
}

// DefaultMaxConnections is a vmchannel's limit of concurrent guest
// connections when the definition sets none: enough for a busy guest, small
// enough that a runaway guest cannot exhaust the host's descriptors.
const DefaultMaxConnections = 256

func vmchannel(addr, port, path, proxy, maxConns string) VMChannel {
	a, _ := netip.ParseAddr(addr)
	p, _ := strconv.ParseUint(port, 10, 16)
	limit := DefaultMaxConnections
	if maxConns != "" {
		limit, _ = strconv.Atoi(maxConns)
	}
	return VMChannel{Address: a, Port: uint16(p), Path: path, Proxy: proxy, MaxConnections: limit}
}

// VirtioPorts returns the virtio-serial ports whose sockets minivirt binds.
func (d *Domain) VirtioPorts() []VirtioPort {
	var out []VirtioPort
	for _, ch := range d.Devices.Channels {
		if ch.Target.Type == "virtio" {
			out = append(out, VirtioPort{Name: ch.Target.Name, Path: ch.Source.Path})
		}
	}
	return out
}

// Network returns the network that carries the domain's vmchannels: the one
// the vmchannels element names; else QEMU's user network when the domain has
// an explicit user interface (it wants NAT); else minivirt's own.
func (d *Domain) Network() string {
	if d.Devices.VMChannels != nil && d.Devices.VMChannels.Network != "" {
		return d.Devices.VMChannels.Network
	}
	for _, nic := range d.Devices.Interfaces {
		if nic.Type == "user" {
			return NetworkSlirp
		}
	}
	return NetworkNetstack
}

// UserNIC describes the domain's user-mode NIC, if it has one.
type UserNIC struct {
	Model string
	MAC   string
	// Isolated is true for the NIC minivirt adds for vmchannels: the guest
	// reaches nothing but its vmchannels (QEMU's restrict=on).
	Isolated bool
}

// UserNIC returns the explicit <interface type='user'>, or the isolated one
// implied by vmchannels, or false when the domain has no network.
// The implied NIC is never written into the definition: it follows the
// vmchannels, so removing the last vmchannel removes it too.
func (d *Domain) UserNIC() (UserNIC, bool) {
	for _, nic := range d.Devices.Interfaces {
		if nic.Type == "user" {
			u := UserNIC{Model: "virtio"}
			if nic.Model != nil {
				u.Model = nic.Model.Type
			}
			if nic.MAC != nil {
				u.MAC = nic.MAC.Address
			}
			return u, true
		}
	}
	if len(d.VMChannels()) > 0 {
		return UserNIC{Model: "virtio", Isolated: true}, true
	}
	return UserNIC{}, false
}
