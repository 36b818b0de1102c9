package domain

import (
	"bytes"
	"os"
	"testing"
)

// FuzzDomain checks parse + validate + marshal: no input panics, and every
// accepted definition writes back to text that reads back to the same text.
func FuzzDomain(f *testing.F) {
	for _, file := range examples(f) {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for i := 0; i < 4; i++ {
		f.Add([]byte(generated(i)))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d, err := Parse(bytes.NewReader(data))
		if err != nil {
			return
		}
		_ = d.Warnings()
		if d.Validate() != nil {
			return
		}
		a, err := d.XML()
		if err != nil {
			t.Fatalf("XML of a valid domain: %v", err)
		}
		d2, err := Parse(bytes.NewReader(a))
		if err != nil {
			t.Fatalf("own output does not parse: %v\n%s", err, a)
		}
		if err := d2.Validate(); err != nil {
			t.Fatalf("own output does not validate: %v\n%s", err, a)
		}
		b, err := d2.XML()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("round trip differs:\n%s\n---\n%s", a, b)
		}
		if _, err := d.LibvirtXML(); err != nil {
			t.Fatalf("LibvirtXML: %v", err)
		}
	})
}
