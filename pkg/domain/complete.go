package domain

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"reflect"
	"sort"
	"strings"

	"libvirt.org/go/libvirtxml"
)

// dropped names every element, attribute and text the document holds that
// the model, written back, does not: what libvirtxml does not know, and what
// it can hold only once (a second <name>). It counts each path in the
// document and in the model's own output; minivirt's extensions and the
// opaque content of <metadata> are not counted.
func dropped(doc []byte, model *libvirtxml.Domain) ([]string, error) {
	in, err := census(doc, true)
	if err != nil {
		return nil, err
	}
	written, err := model.Marshal()
	if err != nil {
		return nil, fmt.Errorf("XML: %w", err)
	}
	out, err := census([]byte(written), false)
	if err != nil {
		return nil, fmt.Errorf("XML: the model's own output: %w", err)
	}
	var lost []string
	for path, n := range in.counts {
		switch kept := out.counts[path]; {
		case kept >= n:
		case n-kept <= in.empty[path] && knownText(path):
			// libvirtxml leaves out an empty string element: it had no value.
			lost = append(lost, fmt.Sprintf("<%s>: empty; give it a value or remove it", strings.TrimPrefix(path, "domain/")))
		default:
			lost = append(lost, describePath(path, n, kept))
		}
	}
	sort.Strings(lost)
	return lost, nil
}

// pathCounts counts the paths of a document: "domain/devices/disk" for an
// element, "...@attr" for an attribute, "...#text" for text; empty counts
// the elements with no attribute, child or text.
type pathCounts struct {
	counts, empty map[string]int
}

// census counts the paths of a document. With input set, minivirt's
// first-release extensions are left out.
func census(doc []byte, input bool) (pathCounts, error) {
	counts, empty := map[string]int{}, map[string]int{}
	dec := newDecoder(doc)
	var path []string
	var hollow []bool // per open element: nothing inside it so far
	skip := 0         // depth inside a subtree that is not counted
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return pathCounts{counts, empty}, nil
		}
		if err != nil {
			return pathCounts{}, xmlError(err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if len(hollow) > 0 {
				hollow[len(hollow)-1] = false
			}
			hollow = append(hollow, len(t.Attr) == 0)
			path = append(path, name(t.Name))
			if skip > 0 {
				skip++
				continue
			}
			p := strings.Join(path, "/")
			if input && extension(p, t) {
				skip = 1
				continue
			}
			counts[p]++
			for _, a := range t.Attr {
				if a.Name.Space == "xmlns" || a.Name.Space == "" && a.Name.Local == "xmlns" {
					continue
				}
				if input && p == "domain/devices/channel/target" && (a.Name.Local == "proxy" || a.Name.Local == "maxconnections") {
					continue
				}
				if p == "domain/devices/redirfilter/usbdev" && a.Value == "-1" {
					continue // "any": libvirt's way of writing what is absent
				}
				counts[p+"@"+name(a.Name)]++
			}
			if p == "domain/metadata" {
				skip = 1 // opaque: kept verbatim
			}
		case xml.EndElement:
			if hollow[len(hollow)-1] && skip == 0 {
				empty[strings.Join(path, "/")]++
			}
			hollow = hollow[:len(hollow)-1]
			path = path[:len(path)-1]
			if skip > 0 {
				skip--
			}
		case xml.CharData:
			if len(path) > 0 && len(bytes.TrimSpace(t)) > 0 {
				hollow[len(hollow)-1] = false
				if skip == 0 {
					counts[strings.Join(path, "/")+"#text"]++
				}
			}
		}
	}
}

// extension reports minivirt's first-release elements, which Parse reads
// itself.
func extension(path string, t xml.StartElement) bool {
	switch path {
	case "domain/devices/interface":
		return attr(t, "type") == "vmchannel"
	case "domain/devices/vmchannels":
		return true
	}
	return false
}

func name(n xml.Name) string {
	switch n.Space {
	case "":
		return n.Local
	case "http://libvirt.org/schemas/domain/qemu/1.0":
		return "qemu:" + n.Local
	}
	return "{" + n.Space + "}" + n.Local
}

// knownText reports whether path names an element libvirtxml holds as a
// string: one that, left empty, it writes back as nothing. It follows the
// model's xml tags from the root.
func knownText(path string) bool {
	t := reflect.TypeOf(libvirtxml.Domain{})
	for _, part := range strings.Split(path, "/")[1:] {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct {
			return false
		}
		f, ok := fieldByXMLName(t, part)
		if !ok {
			return false
		}
		t = f.Type
	}
	return t.Kind() == reflect.String
}

func fieldByXMLName(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag, opts, _ := strings.Cut(f.Tag.Get("xml"), ",")
		if tag == name && !strings.Contains(opts, "attr") {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// describePath words one loss for the user.
func describePath(path string, have, kept int) string {
	elem, what := path, ""
	if i := strings.IndexAny(path, "@#"); i >= 0 {
		elem, what = path[:i], path[i:]
	}
	elem = strings.TrimPrefix(elem, "domain/")
	const unknown = "not part of libvirt's domain XML as minivirt reads it, so it would be lost; remove it or correct its spelling"
	switch {
	case strings.HasPrefix(what, "@"):
		if kept > 0 {
			return fmt.Sprintf("attribute %s of <%s>: given %d times; give it once", what[1:], elem, have)
		}
		return fmt.Sprintf("attribute %s of <%s>: %s", what[1:], elem, unknown)
	case what == "#text":
		return fmt.Sprintf("text inside <%s>: %s", elem, unknown)
	case kept > 0:
		return fmt.Sprintf("<%s>: given %d times where libvirt takes one; give it once", elem, have)
	}
	return fmt.Sprintf("<%s>: %s", elem, unknown)
}
