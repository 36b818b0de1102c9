package domain

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"golang.org/x/net/html/charset"
	"libvirt.org/go/libvirtxml"

	"github.com/minivirt/minivirt/pkg/domain/internal/fields"
)

// maxDocument bounds what Parse reads: far above any real domain.
const maxDocument = 16 << 20

// Parse reads one domain definition and normalises it: a uuid is generated
// when absent, memory is converted to KiB, and libvirt's defaults are made
// explicit, so that writing it back and reading it again gives the same
// bytes. It refuses, naming them, elements and attributes the model would
// not keep. Validate checks minivirt's rules.
func Parse(r io.Reader) (*Domain, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxDocument+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxDocument {
		return nil, fmt.Errorf("XML: over %d MiB; a domain definition is far smaller", maxDocument>>20)
	}
	trimmed := bytes.TrimSpace(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")))
	if len(trimmed) == 0 {
		return nil, errors.New("XML: empty document; give one <domain> element")
	}
	if trimmed[0] != '<' {
		return nil, fmt.Errorf("not XML: a domain definition is one <domain> element, and this starts with %q", string(trimmed[:min(len(trimmed), 12)]))
	}
	var w wire
	dec := newDecoder(data)
	if err := dec.Decode(&w); err != nil {
		return nil, xmlError(err)
	}
	if err := rest(dec); err != nil {
		return nil, err
	}
	if w.XMLName.Local != "domain" {
		return nil, fmt.Errorf("XML: the root element is <%s>; a domain definition is one <domain>", w.XMLName.Local)
	}
	d, err := w.domain()
	if err != nil {
		return nil, err
	}
	if err := d.guestfwdOptions(data); err != nil {
		return nil, err
	}
	if d.dropped, err = dropped(data, &d.Domain); err != nil {
		return nil, err
	}
	if err := d.normalise(); err != nil {
		return nil, err
	}
	return d, nil
}

func newDecoder(data []byte) *xml.Decoder {
	dec := xml.NewDecoder(bytes.NewReader(data))
	dec.CharsetReader = charset.NewReaderLabel // encoding='ISO-8859-1' and the like
	return dec
}

// rest refuses anything but white space, comments and processing
// instructions after the root element.
func rest(dec *xml.Decoder) error {
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return xmlError(err)
		}
		switch t := tok.(type) {
		case xml.CharData:
			if len(bytes.TrimSpace(t)) != 0 {
				return errors.New("XML: text after the <domain> element")
			}
		case xml.Comment, xml.ProcInst, xml.Directive:
		default:
			return errors.New("XML: more than one root element; give one <domain>")
		}
	}
}

func xmlError(err error) error {
	var se *xml.SyntaxError
	if errors.As(err, &se) {
		return fmt.Errorf("XML: line %d: %s", se.Line, se.Msg)
	}
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		return fmt.Errorf("XML: value %q: must be a whole number in range", ne.Num)
	}
	var ue xml.UnmarshalError
	if errors.As(err, &ue) {
		return fmt.Errorf("XML: %s", string(ue))
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("XML: the document ends before </domain>; is it whole?")
	}
	return fmt.Errorf("XML: %s", strings.TrimPrefix(err.Error(), "xml: "))
}

// wire is libvirt's model with minivirt's first-release extensions taken out
// on the way in: <interface type='vmchannel'> (which libvirtxml refuses) and
// <vmchannels network=”/> (which it would drop); everything else is
// libvirtxml's own decoding. The third, proxy and maxconnections on a
// guestfwd channel's target, is read by guestfwdOptions.
type wire struct {
	XMLName xml.Name // the root element's name, whatever it is
	libvirtxml.Domain
	Devices *wireDevices `xml:"devices"` // shadows Domain.Devices
}

type wireDevices struct {
	fields.Devices                 // libvirt's device list, less the fields shadowed here
	Interfaces     []wireInterface `xml:"interface"`
	VMChannels     *struct {
		Network string `xml:"network,attr"`
	} `xml:"vmchannels"`
}

// wireInterface is a libvirt <interface>, or the first release's
// <interface type='vmchannel'>.
type wireInterface struct {
	vmchannel *ExtVMChannel
	libvirt   libvirtxml.DomainInterface
}

func (i *wireInterface) UnmarshalXML(dec *xml.Decoder, start xml.StartElement) error {
	if attr(start, "type") != "vmchannel" {
		return dec.DecodeElement(&i.libvirt, &start)
	}
	var v struct {
		Source *struct {
			Address string `xml:"address,attr"`
			Port    uint   `xml:"port,attr"`
		} `xml:"source"`
		Target *struct {
			Path           string `xml:"path,attr"`
			Proxy          string `xml:"proxy,attr"`
			MaxConnections *uint  `xml:"maxconnections,attr"`
		} `xml:"target"`
	}
	if err := dec.DecodeElement(&v, &start); err != nil {
		return err
	}
	if v.Source == nil {
		return errors.New("vmchannel: missing <source port=''/>")
	}
	if v.Target == nil {
		return fmt.Errorf("vmchannel port %d: missing <target path=''/>", v.Source.Port)
	}
	i.vmchannel = &ExtVMChannel{Address: v.Source.Address, Port: v.Source.Port, Path: v.Target.Path, Proxy: v.Target.Proxy}
	if m := v.Target.MaxConnections; m != nil {
		if *m == 0 {
			return fmt.Errorf("vmchannel port %d maxconnections 0: must be 1-65535", v.Source.Port)
		}
		i.vmchannel.MaxConnections = *m
	}
	return nil
}

func attr(start xml.StartElement, name string) string {
	for _, a := range start.Attr {
		if a.Name.Space == "" && a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// domain assembles the model: libvirt's part, and minivirt's from the
// metadata and from the first release's forms.
func (w *wire) domain() (*Domain, error) {
	d := &Domain{Domain: w.Domain}
	if w.Metadata != nil {
		ext, others, err := splitMetadata(w.Metadata.XML)
		if err != nil {
			return nil, err
		}
		d.Ext, d.otherMetadata = ext, others
	}
	if w.Devices == nil {
		return d, nil
	}
	devices := libvirtxml.DomainDeviceList(w.Devices.Devices)
	if len(devices.IOMMUs) > 0 { // as libvirtxml's own decoding does
		devices.IOMMU = &devices.IOMMUs[0]
	}
	devices.Interfaces = nil
	for _, i := range w.Devices.Interfaces {
		if i.vmchannel != nil {
			d.Ext.VMChannels = append(d.Ext.VMChannels, *i.vmchannel)
			continue
		}
		devices.Interfaces = append(devices.Interfaces, i.libvirt)
	}
	if v := w.Devices.VMChannels; v != nil {
		if d.Ext.Network != "" && d.Ext.Network != v.Network {
			return nil, fmt.Errorf("vmchannels network: %q in <devices> and %q in <metadata>; give one", v.Network, d.Ext.Network)
		}
		d.Ext.Network = v.Network
		if d.Ext.Network == "" {
			return nil, errors.New("vmchannels network: empty; use netstack or slirp")
		}
	}
	d.Devices = &devices
	return d, nil
}

// guestfwdOptions reads the first release's proxy and maxconnections
// attributes of guestfwd channel targets into minivirt's metadata. The n-th
// <channel> here is the n-th in libvirt's model.
func (d *Domain) guestfwdOptions(data []byte) error {
	var doc struct {
		Devices struct {
			Channels []struct {
				Target struct {
					Type           string `xml:"type,attr"`
					Proxy          string `xml:"proxy,attr"`
					MaxConnections string `xml:"maxconnections,attr"`
				} `xml:"target"`
			} `xml:"channel"`
		} `xml:"devices"`
	}
	if err := newDecoder(data).Decode(&doc); err != nil {
		return xmlError(err)
	}
	for i, c := range doc.Devices.Channels {
		t := c.Target
		if t.Type != "guestfwd" || t.Proxy == "" && t.MaxConnections == "" || i >= len(d.Devices.Channels) {
			continue
		}
		fwd := d.Devices.Channels[i].Target.GuestFWD
		port, err := strconv.ParseUint(fwd.Port, 10, 32)
		if err != nil {
			return fmt.Errorf("channel guestfwd port %q: must be 1-65535", fwd.Port)
		}
		e := ExtVMChannel{Address: fwd.Address, Port: uint(port), Proxy: t.Proxy}
		if t.MaxConnections != "" {
			n, err := strconv.ParseUint(t.MaxConnections, 10, 32)
			if err != nil || n == 0 {
				return fmt.Errorf("vmchannel port %d maxconnections %q: must be 1-65535", port, t.MaxConnections)
			}
			e.MaxConnections = uint(n)
		}
		d.Ext.VMChannels = append(d.Ext.VMChannels, e)
	}
	return nil
}
