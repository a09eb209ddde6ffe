package bench

import (
	"strings"
	"testing"
)

func TestReplaceSection(t *testing.T) {
	begin, end := beginMarker("bench-x"), endMarker("bench-x")
	for _, tc := range []struct {
		name, doc, want, err string
	}{
		{
			name: "appended under its heading",
			doc:  "# Perf\n\ntext\n",
			want: "# Perf\n\ntext\n\n## X\n\n" + begin + "\nnew\n" + end + "\n",
		},
		{
			name: "replaced between the markers, the rest kept",
			doc:  "a\n" + begin + "\nold\nlines\n" + end + "\nb\n",
			want: "a\n" + begin + "\nnew\n" + end + "\nb\n",
		},
		{name: "end marker only", doc: "a\n" + end + "\n", err: "markers"},
		{name: "markers reversed", doc: end + "\n" + begin + "\n", err: "markers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReplaceSection(tc.doc, "bench-x", "## X", "\nnew\n")
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got\n%q\nwant\n%q", got, tc.want)
			}
			again, err := ReplaceSection(got, "bench-x", "## X", "new")
			if err != nil || again != got {
				t.Errorf("replacing twice changed the document: %q, %v", again, err)
			}
		})
	}
}
