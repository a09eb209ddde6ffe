package main

import (
	"strings"
	"testing"
)

func TestFilter(t *testing.T) {
	const (
		okPkg = `{"Action":"start","Package":"p"}
{"Action":"run","Package":"p","Test":"TestA"}
{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"p","Test":"TestA","Output":"--- PASS: TestA (0.00s)\n"}
{"Action":"pass","Package":"p","Test":"TestA"}
{"Action":"run","Package":"p","Test":"FuzzB"}
{"Action":"run","Package":"p","Test":"FuzzB/seed#0"}
{"Action":"pass","Package":"p","Test":"FuzzB/seed#0"}
{"Action":"pass","Package":"p","Test":"FuzzB"}
{"Action":"output","Package":"p","Output":"PASS\n"}
{"Action":"output","Package":"p","Output":"ok  \tp\t0.01s\n"}
{"Action":"pass","Package":"p"}
`
		noTests = `{"Action":"start","Package":"q"}
{"Action":"output","Package":"q","Output":"?   \tq\t[no test files]\n"}
{"Action":"skip","Package":"q"}
`
		skippedTest = `{"Action":"run","Package":"r","Test":"TestRoot"}
{"Action":"output","Package":"r","Test":"TestRoot","Output":"=== RUN   TestRoot\n"}
{"Action":"output","Package":"r","Test":"TestRoot","Output":"    x_test.go:9: skipping: needs root\n"}
{"Action":"output","Package":"r","Test":"TestRoot","Output":"--- SKIP: TestRoot (0.00s)\n"}
{"Action":"skip","Package":"r","Test":"TestRoot"}
{"Action":"output","Package":"r","Output":"ok  \tr\t0.01s\n"}
{"Action":"pass","Package":"r"}
`
		skippedSuite = `{"Action":"start","Package":"s"}
{"Action":"output","Package":"s","Output":"SKIP: integration tests need root\n"}
{"Action":"output","Package":"s","Output":"ok  \ts\t0.01s\n"}
{"Action":"pass","Package":"s"}
`
		failedTest = `{"Action":"run","Package":"f","Test":"TestF"}
{"Action":"output","Package":"f","Test":"TestF","Output":"=== RUN   TestF\n"}
{"Action":"output","Package":"f","Test":"TestF","Output":"    f_test.go:3: boom\n"}
{"Action":"output","Package":"f","Test":"TestF","Output":"--- FAIL: TestF (0.00s)\n"}
{"Action":"fail","Package":"f","Test":"TestF"}
{"Action":"output","Package":"f","Output":"FAIL\n"}
{"Action":"output","Package":"f","Output":"FAIL\tf\t0.01s\n"}
{"Action":"fail","Package":"f"}
`
		buildFailed = `{"ImportPath":"b [b.test]","Action":"build-output","Output":"# b\n./b.go:1: syntax error\n"}
{"ImportPath":"b [b.test]","Action":"build-fail"}
`
	)
	for _, tc := range []struct {
		name, in string
		code     int
		want     []string // substrings of the output
		not      []string
	}{
		{"passing tests and fuzz seeds", okPkg, 0, []string{"ok  \tp\t0.01s"}, []string{"=== RUN", "PASS\n", "--- PASS"}},
		{"package without tests", noTests, 0, []string{"[no test files]"}, nil},
		{"skipped test", okPkg + skippedTest, 1, []string{"SKIPPED 1;", "SKIPPED r TestRoot: x_test.go:9: skipping: needs root\n"}, nil},
		{"suite skipped in TestMain", skippedSuite, 1, []string{"SKIPPED 1;", "SKIPPED s: SKIP: integration tests need root\n"}, nil},
		{"failed test", failedTest, 1, []string{"f_test.go:3: boom", "--- FAIL: TestF", "FAIL\tf"}, nil},
		{"build failure", buildFailed, 1, []string{"syntax error"}, nil},
		{"not JSON", "go: downloading x\n" + okPkg, 0, []string{"go: downloading x"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			if code := filter(strings.NewReader(tc.in), &out, false); code != tc.code {
				t.Errorf("exit code %d, want %d; output:\n%s", code, tc.code, out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, n := range tc.not {
				if strings.Contains(out.String(), n) {
					t.Errorf("output has %q:\n%s", n, out.String())
				}
			}
		})
	}
	t.Run("verbose prints every line", func(t *testing.T) {
		var out strings.Builder
		filter(strings.NewReader(okPkg), &out, true)
		if !strings.Contains(out.String(), "=== RUN   TestA") || !strings.Contains(out.String(), "--- PASS: TestA") {
			t.Errorf("verbose output:\n%s", out.String())
		}
	})
}
