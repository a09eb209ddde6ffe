package source

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// FuzzLoadDir writes arbitrary bytes as the only manifest of a directory
// and checks the loader's contract: no panic; a failure names the file, and
// a *ParseError in the chain carries the file's path and a line inside the
// file (or just past its end); a success is deterministic (a second load
// gives the same objects and warnings), every warning names the file, and
// every pod and NetworkPolicy lives in a namespace the Input declares.
// testdata/fuzz/FuzzLoadDir keeps an input whose parser error points past
// the end of the file.
//
// The seeds are the example manifests and every fixture of the loader's
// table tests: multi-document, List, JSON and malformed files.
func FuzzLoadDir(f *testing.F) {
	var seeds []string
	for _, pattern := range []string{"../../deploy/examples/*.yaml", "testdata/*/*.yaml", "testdata/*/*.yml", "testdata/*/*.json"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			f.Fatal(err)
		}
		seeds = append(seeds, m...)
	}
	if len(seeds) < 5 {
		f.Fatalf("found only %d seed manifests: %v", len(seeds), seeds)
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("apiVersion: v1\nkind: List\nitems: [{apiVersion: v1, kind: Pod, metadata: {name: p, namespace: q}}, 7, null]\n"))
	f.Add([]byte("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList\nitems: {}\n"))
	f.Add([]byte("{\"kind\":\"Namespace\",\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"a\"}} {\"kind\":"))
	f.Add([]byte("---\n...\n---\n\xef\xbb\xbfkind: Pod\n\t"))
	f.Add([]byte("kind: Pod\napiVersion: v1\nmetadata: {name: p, namespace: \"\"}\nstatus: {podIP: 10.0.0.1%eth0, podIPs: [{ip: 1.2.3}]}\n"))
	f.Add([]byte(""))

	f.Fuzz(func(t *testing.T, content []byte) {
		dir := t.TempDir()
		file := filepath.Join(dir, "m.yaml")
		if err := os.WriteFile(file, content, 0o644); err != nil {
			t.Fatal(err)
		}
		in, warnings, err := LoadDir(dir)
		if err != nil {
			if !strings.Contains(err.Error(), file) {
				t.Fatalf("error does not name %s: %v", file, err)
			}
			var pe *ParseError
			if errors.As(err, &pe) {
				// The YAML parser may point one line past the end when
				// the file ends inside a construct.
				last := strings.Count(string(content), "\n") + 2
				if pe.File != file || pe.Line < 1 || pe.Line > last {
					t.Fatalf("ParseError at %s:%d, want %s and a line in 1..%d: %v", pe.File, pe.Line, file, last, err)
				}
			}
			return
		}
		for _, w := range warnings {
			if w.File != file {
				t.Fatalf("warning names %q, want %q: %+v", w.File, file, w)
			}
		}
		declared := map[string]bool{}
		for _, ns := range in.Namespaces {
			declared[ns.Name] = true
		}
		for _, p := range in.Pods {
			if !declared[p.Namespace] {
				t.Fatalf("pod %s/%s lives in an undeclared namespace", p.Namespace, p.Name)
			}
		}
		for _, np := range in.NetworkPolicies {
			if !declared[np.Namespace] {
				t.Fatalf("NetworkPolicy %s/%s lives in an undeclared namespace", np.Namespace, np.Name)
			}
		}
		in2, warnings2, err := LoadDir(dir)
		if err != nil || !reflect.DeepEqual(in, in2) || !reflect.DeepEqual(warnings, warnings2) {
			t.Fatalf("a second load differs: err=%v", err)
		}
	})
}
