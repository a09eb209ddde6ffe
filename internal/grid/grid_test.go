package grid

import (
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	var b strings.Builder
	labels := []string{"x/a", "y/long"}
	if err := Write(&b, labels, func(i, j int) bool { return i == j }); err != nil {
		t.Fatal(err)
	}
	want := "  " + Legend + "\n\n" +
		"         x/a      y/long\n" +
		"     x/a  .         X\n" +
		"  y/long  X         .\n"
	if b.String() != want {
		t.Errorf("got\n%q\nwant\n%q", b.String(), want)
	}
}
