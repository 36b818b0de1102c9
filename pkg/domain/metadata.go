package domain

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"
)

// splitMetadata takes minivirt's element out of <metadata>'s content and
// returns the other applications' elements each exactly as written: the
// XML parser says where each element begins and ends, and those bytes are
// kept as they are (encoding/xml cannot write other namespaces' prefixes
// back, so they are never re-encoded).
func splitMetadata(inner string) (Extension, []string, error) {
	var ext Extension
	var others []string
	found := false
	dec := xml.NewDecoder(strings.NewReader(inner))
	for {
		begin := dec.InputOffset()
		tok, err := dec.Token()
		if err == io.EOF {
			return ext, others, nil
		}
		if err != nil {
			return ext, nil, fmt.Errorf("metadata: %w", xmlError(err))
		}
		start, ok := tok.(xml.StartElement)
		if !ok {
			continue // white space and comments between elements
		}
		if start.Name.Space == Namespace && start.Name.Local == "vmchannels" {
			if found {
				return ext, nil, fmt.Errorf("metadata: minivirt's <vmchannels> given twice; give one")
			}
			found = true
			if err := dec.DecodeElement(&ext, &start); err != nil {
				return ext, nil, fmt.Errorf("metadata vmchannels: %w", xmlError(err))
			}
			continue
		}
		if start.Name.Space == "" {
			return ext, nil, fmt.Errorf("metadata <%s>: has no namespace; libvirt keeps an application's metadata only in its own namespace, as <app:%s xmlns:app='URI'>", start.Name.Local, start.Name.Local)
		}
		if err := dec.Skip(); err != nil {
			return ext, nil, fmt.Errorf("metadata: %w", xmlError(err))
		}
		others = append(others, inner[begin:dec.InputOffset()])
	}
}

// metadata returns the content of <metadata>: the other applications'
// elements as they were read, then minivirt's; nil when there is none.
func (d *Domain) metadata() (*string, error) {
	parts := append([]string(nil), d.otherMetadata...)
	if !d.Ext.empty() {
		mine, err := xml.MarshalIndent(d.Ext, "    ", "  ")
		if err != nil {
			return nil, fmt.Errorf("writing minivirt's metadata: %w", err)
		}
		parts = append(parts, strings.TrimLeft(string(mine), " "))
	}
	if len(parts) == 0 {
		return nil, nil
	}
	s := "\n    " + strings.Join(parts, "\n    ") + "\n  "
	return &s, nil
}
