package domain

import (
	"reflect"
	"strings"
)

// unhandled returns the XML names of the fields of the struct v (or the
// struct v points to) that are set and not among handled, which are Go field
// names: what minivirt would otherwise ignore. Attributes are named "attribute
// NAME", elements "<NAME>".
func unhandled(v any, handled ...string) []string {
	rv := reflect.ValueOf(v)
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil
		}
		rv = rv.Elem()
	}
	rt := rv.Type()
	var out []string
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		if f.Name == "XMLName" || !f.IsExported() || contains(handled, f.Name) || rv.Field(i).IsZero() {
			continue
		}
		out = append(out, xmlFieldName(f))
	}
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// xmlFieldName is how the XML names a struct field of libvirtxml.
func xmlFieldName(f reflect.StructField) string {
	tag := f.Tag.Get("xml")
	name, opts, _ := strings.Cut(tag, ",")
	if i := strings.LastIndexByte(name, ' '); i >= 0 { // "namespace name"
		name = name[i+1:]
	}
	if name == "" || name == "-" {
		// A variant chosen by a type attribute (a disk's source kind, say).
		return "type " + strings.ToLower(f.Name)
	}
	if strings.Contains(opts, "attr") {
		return "attribute " + name
	}
	return "<" + name + ">"
}
