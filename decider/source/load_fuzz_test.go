package source

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoad writes arbitrary bytes as a manifest file: LoadDir never panics,
// and an error names the file. (Coverage-guided fuzzing of this target is
// slow: the loader pulls in client-go's decoders. TestLoadDirMutations
// below covers the same property with seeded mutations on every run.)
func FuzzLoad(f *testing.F) {
	for _, p := range []string{"../../deploy/examples/cluster.yaml", "../../deploy/examples/policies.yaml"} {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n"))
	f.Add([]byte("{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\"}}"))
	f.Add([]byte("kind: NetworkPolicy\nmetadata: {name: x, namespace: y}\nspec: {podSelector: {]]"))
	f.Add([]byte("---\n---\nkind: Unknown\n"))
	f.Add([]byte("a: &a [*a, *a]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b, *b]\n"))
	f.Fuzz(func(t *testing.T, content []byte) { loadOne(t, content) })
}

func loadOne(t *testing.T, content []byte) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "fuzz.yaml"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := LoadDir(dir)
	if err != nil && !strings.Contains(err.Error(), "fuzz.yaml") {
		t.Fatalf("error does not name the file: %v\ninput:\n%s", err, content)
	}
	// A line, when given, is one of the file's.
	var pe *ParseError
	if errors.As(err, &pe) {
		data := bytes.TrimPrefix(content, utf8BOM)
		lines := bytes.Count(data, []byte("\n"))
		if len(data) == 0 || data[len(data)-1] != '\n' {
			lines++
		}
		if pe.Line < 1 || pe.Line > max(lines, 1) {
			t.Fatalf("error points at line %d of a %d-line file: %v\ninput:\n%q", pe.Line, lines, err, content)
		}
	}
}

// TestLoadDirMutations loads 500 seeded mutations (byte flips, cuts,
// copies) of the example manifests: never a panic, errors name the file.
func TestLoadDirMutations(t *testing.T) {
	var seeds [][]byte
	for _, p := range []string{"../../deploy/examples/cluster.yaml", "../../deploy/examples/policies.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, b)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		b := append([]byte(nil), seeds[r.IntN(len(seeds))]...)
		for range 1 + r.IntN(5) {
			p := r.IntN(len(b))
			switch r.IntN(3) {
			case 0:
				b[p] = byte(r.IntN(256))
			case 1:
				b = append(b[:p], b[min(len(b), p+r.IntN(20)):]...)
			default:
				q := r.IntN(len(b))
				chunk := append([]byte(nil), b[q:min(len(b), q+10)]...)
				b = append(b[:p:p], append(chunk, b[p:]...)...)
			}
			if len(b) == 0 {
				b = []byte("x")
			}
		}
		loadOne(t, b)
	}
}
