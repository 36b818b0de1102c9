package domain

import (
	"os"
	"strings"
	"testing"
)

// TestREADMETable: the README's table of elements is Elements, row for row.
func TestREADMETable(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	for _, e := range Elements {
		row := "| " + e.Name + " | " + string(e.Class) + " | " + e.How + " |"
		if !strings.Contains(readme, row) {
			t.Errorf("README lacks the row:\n%s", row)
		}
	}
}
