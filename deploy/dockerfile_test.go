package deploy

// We cannot run Docker in CI, so these tests read the Dockerfile as text and
// hold it to what the build and the DaemonSet need.

import (
	"fmt"
	"go/build"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// repoRoot is the module root, relative to this package's directory.
const repoRoot = ".."

// instruction is one Dockerfile instruction with its continuation lines
// joined.
type instruction struct {
	line int    // first line, 1-based
	cmd  string // upper case: FROM, RUN, COPY, ...
	args string
}

// stage is one FROM section.
type stage struct {
	name  string // the AS name, lower case; "" when unnamed
	image string
	body  []instruction
}

// parseDockerfile splits a Dockerfile into stages. It understands comments,
// backslash continuations (with comment lines inside them), and
// `FROM [--platform=...] image [AS name]`; that is all our Dockerfile uses.
func parseDockerfile(text string) ([]stage, error) {
	var (
		stages  []stage
		pending string
		start   int
	)
	flush := func() error {
		fields := strings.Fields(pending)
		pending = ""
		if len(fields) == 0 {
			return nil
		}
		in := instruction{line: start, cmd: strings.ToUpper(fields[0]), args: strings.Join(fields[1:], " ")}
		if in.cmd == "FROM" {
			var words []string
			for _, w := range fields[1:] {
				if !strings.HasPrefix(w, "--") {
					words = append(words, w)
				}
			}
			switch {
			case len(words) == 1:
				stages = append(stages, stage{image: words[0]})
			case len(words) == 3 && strings.EqualFold(words[1], "AS"):
				stages = append(stages, stage{image: words[0], name: strings.ToLower(words[2])})
			default:
				return fmt.Errorf("line %d: cannot parse FROM %q", start, in.args)
			}
			return nil
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				return nil // global build arguments
			}
			return fmt.Errorf("line %d: %s before the first FROM", start, in.cmd)
		}
		s := &stages[len(stages)-1]
		s.body = append(s.body, in)
		return nil
	}
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || strings.HasPrefix(line, "#") {
			continue // comments may sit inside a continuation too
		}
		if pending == "" {
			start = i + 1
		}
		cont := strings.HasSuffix(line, "\\")
		pending += " " + strings.TrimSuffix(line, "\\")
		if !cont {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	if pending != "" {
		return nil, fmt.Errorf("line %d: continuation runs past the end of the file", start)
	}
	return stages, nil
}

// splitWords splits a shell command into words, honouring single and double
// quotes. Variables stay unexpanded.
func splitWords(s string) ([]string, error) {
	var (
		words  []string
		cur    strings.Builder
		quote  rune
		inWord bool
	)
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote in %q", quote, s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// commands splits a RUN line into its simple commands (at && and ;).
func commands(run string) []string {
	var out []string
	for _, part := range strings.Split(run, "&&") {
		for _, c := range strings.Split(part, ";") {
			if c = strings.TrimSpace(c); c != "" {
				out = append(out, c)
			}
		}
	}
	return out
}

func TestParseDockerfile(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    []string // "name=image:instruction count"
		wantErr bool
	}{
		{
			name: "stages, continuations and comments",
			text: "ARG X=1\n# c\nFROM golang:1 AS Build\nRUN a \\\n  # inside\n  && b\nFROM --platform=linux/amd64 scratch as final\nCOPY --from=build /a /b\nfrom debian\n",
			want: []string{"build=golang:1:1", "final=scratch:1", "=debian:0"},
		},
		{name: "instruction before FROM", text: "RUN x\nFROM a\n", wantErr: true},
		{name: "bad FROM", text: "FROM a b\n", wantErr: true},
		{name: "dangling continuation", text: "FROM a\nRUN x \\\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stages, err := parseDockerfile(tt.text)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parsed %+v, want an error", stages)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range stages {
				got = append(got, fmt.Sprintf("%s=%s:%d", s.name, s.image, len(s.body)))
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("stages = %v, want %v", got, tt.want)
			}
			if len(stages) > 0 && len(stages[0].body) > 0 {
				if got := stages[0].body[0].args; got != "a && b" {
					t.Errorf("joined RUN = %q, want %q", got, "a && b")
				}
			}
		})
	}
}

func TestSplitWords(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{in: `go build -o /out/x ./x`, want: []string{"go", "build", "-o", "/out/x", "./x"}},
		{in: `-ldflags "-X a.b=${V}" 'c d'`, want: []string{"-ldflags", "-X a.b=${V}", "c d"}},
		{in: `a ""`, want: []string{"a", ""}},
		{in: `a "b`, wantErr: true},
	}
	for _, tt := range tests {
		got, err := splitWords(tt.in)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("splitWords(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// dockerfile is the parsed Dockerfile with what the build stage produces.
type dockerfile struct {
	stages map[string]stage
	// outputs maps each file the build stage writes to what produced it
	// (a package path or module@version).
	outputs map[string]string
	// ldflags of each `go build`, by package.
	ldflags map[string]string
}

func loadDockerfile(t *testing.T) dockerfile {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	stages, err := parseDockerfile(string(text))
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	d := dockerfile{stages: map[string]stage{}, outputs: map[string]string{}, ldflags: map[string]string{}}
	for _, s := range stages {
		if _, dup := d.stages[s.name]; dup {
			t.Fatalf("Dockerfile: stage %q defined twice", s.name)
		}
		d.stages[s.name] = s
	}
	b, ok := d.stages["build"]
	if !ok {
		t.Fatal("Dockerfile has no stage named build")
	}
	env := map[string]string{}
	for _, in := range b.body {
		switch in.cmd {
		case "ENV":
			words, err := splitWords(in.args)
			if err != nil {
				t.Fatalf("line %d: %v", in.line, err)
			}
			for _, w := range words {
				if k, v, ok := strings.Cut(w, "="); ok {
					env[k] = v
				}
			}
		case "RUN":
			for _, c := range commands(in.args) {
				words, err := splitWords(c)
				if err != nil {
					t.Fatalf("line %d: %v", in.line, err)
				}
				d.addGoCommand(t, in.line, env, words)
			}
		}
	}
	return d
}

// addGoCommand records what a `go build` or `go install` writes, after
// checking it builds reproducible static binaries.
func (d *dockerfile) addGoCommand(t *testing.T, line int, env map[string]string, words []string) {
	t.Helper()
	vars := map[string]string{}
	for k, v := range env {
		vars[k] = v
	}
	for len(words) > 0 && strings.Contains(words[0], "=") { // VAR=value prefixes
		k, v, _ := strings.Cut(words[0], "=")
		vars[k] = v
		words = words[1:]
	}
	if len(words) < 2 || words[0] != "go" || (words[1] != "build" && words[1] != "install") {
		return
	}
	if vars["CGO_ENABLED"] != "0" {
		t.Errorf("line %d: go %s without CGO_ENABLED=0: the binaries must be static", line, words[1])
	}
	var out, ldflags string
	var pkgs []string
	trimpath := false
	for i := 2; i < len(words); i++ {
		switch w := words[i]; {
		case w == "-trimpath":
			trimpath = true
		case w == "-o" && i+1 < len(words):
			i++
			out = words[i]
		case w == "-ldflags" && i+1 < len(words):
			i++
			ldflags = words[i]
		case strings.HasPrefix(w, "-ldflags="):
			ldflags = strings.TrimPrefix(w, "-ldflags=")
		case strings.HasPrefix(w, "-"):
		default:
			pkgs = append(pkgs, w)
		}
	}
	if !trimpath {
		t.Errorf("line %d: go %s without -trimpath", line, words[1])
	}
	if len(pkgs) != 1 {
		t.Errorf("line %d: go %s of %v: want exactly one package", line, words[1], pkgs)
		return
	}
	pkg := pkgs[0]
	if words[1] == "install" {
		bin := vars["GOBIN"]
		if bin == "" {
			t.Errorf("line %d: go install without GOBIN: the output path is not explicit", line)
			return
		}
		mod, _, _ := strings.Cut(pkg, "@")
		out = path.Join(bin, path.Base(mod))
	}
	if out == "" {
		t.Errorf("line %d: go build of %s without -o", line, pkg)
		return
	}
	d.outputs[out] = pkg
	d.ldflags[pkg] = ldflags
}

// copiesFromBuild returns the COPY --from=build sources and destinations of
// a stage (destination by source).
func copiesFromBuild(t *testing.T, s stage) map[string]string {
	t.Helper()
	copies := map[string]string{}
	for _, in := range s.body {
		if in.cmd != "COPY" {
			continue
		}
		words, err := splitWords(in.args)
		if err != nil {
			t.Fatalf("line %d: %v", in.line, err)
		}
		var from string
		var paths []string
		for _, w := range words {
			if v, ok := strings.CutPrefix(w, "--from="); ok {
				from = v
			} else if !strings.HasPrefix(w, "--") {
				paths = append(paths, w)
			}
		}
		if from != "build" {
			continue
		}
		if len(paths) != 2 {
			t.Errorf("line %d: COPY --from=build %v: want one source and one destination", in.line, paths)
			continue
		}
		copies[paths[0]] = paths[1]
	}
	return copies
}

// lastArg returns the arguments of the last instruction cmd of a stage.
func lastArg(s stage, cmd string) string {
	arg := ""
	for _, in := range s.body {
		if in.cmd == cmd {
			arg = in.args
		}
	}
	return arg
}

// makeVar returns the value of `NAME := value` (or = / ?=) in the Makefile.
func makeVar(t *testing.T, name string) string {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s*[:?]?=\s*(.*)$`)
	m := re.FindSubmatch(text)
	if m == nil {
		t.Fatalf("Makefile does not set %s", name)
	}
	return strings.TrimSpace(string(m[1]))
}

func TestDockerfileBuilderMatchesGoMod(t *testing.T) {
	d := loadDockerfile(t)
	goMod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+)\.(\d+)`).FindSubmatch(goMod)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	want := fmt.Sprintf("%s.%s", m[1], m[2])
	image := d.stages["build"].image
	repo, tag, _ := strings.Cut(image, ":")
	if path.Base(repo) != "golang" {
		t.Fatalf("build stage image %q is not golang", image)
	}
	version, _, _ := strings.Cut(tag, "-")
	if parts := strings.Split(version, "."); len(parts) < 2 || parts[0]+"."+parts[1] != want {
		t.Errorf("build stage uses Go %q, go.mod says %s", version, want)
	}
}

func TestDockerfileBuildsTheBinaries(t *testing.T) {
	d := loadDockerfile(t)
	built := map[string]bool{}
	for _, pkg := range d.outputs {
		built[pkg] = true
	}
	for _, pkg := range []string{"./decider", "./queuer"} {
		if !built[pkg] {
			t.Errorf("the build stage does not build %s", pkg)
		}
	}

	module := goModule(t)
	wantX := ""
	if ld := makeVar(t, "LDFLAGS"); strings.HasPrefix(ld, "-X ") {
		wantX, _, _ = strings.Cut(strings.TrimPrefix(ld, "-X "), "=")
	}
	if wantX == "" {
		t.Fatal("Makefile LDFLAGS sets no -X version symbol")
	}
	for out, pkg := range d.outputs {
		if !strings.HasPrefix(pkg, "./") {
			continue // a tool such as grpcurl
		}
		// Every package the image builds is a main package in this repo.
		p, err := build.ImportDir(filepath.Join(repoRoot, filepath.FromSlash(pkg)), 0)
		if err != nil {
			t.Errorf("%s (built to %s): %v", pkg, out, err)
		} else if p.Name != "main" {
			t.Errorf("%s (built to %s) is package %s, not main", pkg, out, p.Name)
		}
		// The version is stamped as `make build` stamps it.
		if !strings.Contains(d.ldflags[pkg], "-X "+wantX+"=") {
			t.Errorf("%s: ldflags %q do not set %s like the Makefile", pkg, d.ldflags[pkg], wantX)
		}
	}
	// The symbol the version is stamped into belongs to a package of ours.
	sym := wantX[:strings.LastIndex(wantX, ".")]
	rel, ok := strings.CutPrefix(sym, module+"/")
	if !ok {
		t.Fatalf("version symbol %s is outside module %s", wantX, module)
	}
	if _, err := build.ImportDir(filepath.Join(repoRoot, filepath.FromSlash(rel)), 0); err != nil {
		t.Errorf("version package %s: %v", sym, err)
	}
}

// goModule returns the module path from go.mod.
func goModule(t *testing.T) string {
	t.Helper()
	goMod, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^module\s+(\S+)`).FindSubmatch(goMod)
	if m == nil {
		t.Fatal("go.mod has no module line")
	}
	return string(m[1])
}

func TestDockerfileRuntimeStages(t *testing.T) {
	d := loadDockerfile(t)
	tests := []struct {
		stage    string
		binaries []string // build outputs the stage must carry, by package
		user     string
		packages []string // apt packages the stage must install
	}{
		{stage: "decider", binaries: []string{"./decider", "github.com/fullstorydev/grpcurl/cmd/grpcurl@${GRPCURL_VERSION}"}, user: "65532:65532"},
		{stage: "queuer", binaries: []string{"./queuer"}, user: "0:0", packages: []string{"nftables", "iptables", "conntrack"}},
	}
	for _, tt := range tests {
		t.Run(tt.stage, func(t *testing.T) {
			s, ok := d.stages[tt.stage]
			if !ok {
				t.Fatalf("no stage %q", tt.stage)
			}
			if strings.Contains(s.image, "golang") {
				t.Errorf("runtime stage %s is based on the Go toolchain image %s", tt.stage, s.image)
			}
			copies := copiesFromBuild(t, s)
			var carried []string
			for src := range copies {
				pkg, ok := d.outputs[src]
				if !ok {
					t.Errorf("COPY --from=build %s: the build stage writes no such file (it writes %v)", src, slices.Sorted(maps.Keys(d.outputs)))
				}
				carried = append(carried, pkg)
			}
			for _, want := range tt.binaries {
				if !slices.Contains(carried, want) {
					t.Errorf("stage %s does not copy the build of %s", tt.stage, want)
				}
			}
			if got := lastArg(s, "USER"); got != tt.user {
				t.Errorf("stage %s runs as USER %q, want %q", tt.stage, got, tt.user)
			}
			entry := lastArg(s, "ENTRYPOINT")
			bin := copies[outputOf(d, "./"+tt.stage)]
			if want := fmt.Sprintf(`["%s"]`, bin); bin == "" || entry != want {
				t.Errorf("stage %s ENTRYPOINT %s, want %s", tt.stage, entry, want)
			}

			// The RUN line with `apt-get install`, and that command's words.
			install, aptWords := "", []string(nil)
			for _, in := range s.body {
				if in.cmd != "RUN" {
					continue
				}
				for _, c := range commands(in.args) {
					if strings.HasPrefix(c, "apt-get install") {
						install = in.args
						words, err := splitWords(c)
						if err != nil {
							t.Fatalf("line %d: %v", in.line, err)
						}
						aptWords = append(aptWords, words...)
					}
				}
			}
			if len(tt.packages) == 0 {
				if install != "" {
					t.Errorf("stage %s installs packages: %s", tt.stage, install)
				}
			} else {
				for _, p := range tt.packages {
					if !slices.Contains(aptWords, p) {
						t.Errorf("stage %s does not install %s", tt.stage, p)
					}
				}
				if !slices.Contains(aptWords, "--no-install-recommends") {
					t.Errorf("stage %s apt-get install lacks --no-install-recommends", tt.stage)
				}
				if !strings.Contains(install, "rm -rf /var/lib/apt/lists") {
					t.Errorf("stage %s keeps the apt lists in the image", tt.stage)
				}
			}

			labels := map[string]string{}
			for _, in := range s.body {
				if in.cmd != "LABEL" {
					continue
				}
				words, err := splitWords(in.args)
				if err != nil {
					t.Fatal(err)
				}
				for _, w := range words {
					if k, v, ok := strings.Cut(w, "="); ok {
						labels[k] = v
					}
				}
			}
			for _, k := range []string{"title", "description", "source", "version"} {
				if labels["org.opencontainers.image."+k] == "" {
					t.Errorf("stage %s has no org.opencontainers.image.%s label", tt.stage, k)
				}
			}
			if got := labels["org.opencontainers.image.title"]; got != "tollgate-"+tt.stage {
				t.Errorf("stage %s title %q, want tollgate-%s (the image name the DaemonSet uses)", tt.stage, got, tt.stage)
			}
		})
	}
}

// outputOf returns the build-stage file produced from pkg.
func outputOf(d dockerfile, pkg string) string {
	for out, p := range d.outputs {
		if p == pkg {
			return out
		}
	}
	return ""
}

func TestDockerfileToolVersionsMatchMakefile(t *testing.T) {
	d := loadDockerfile(t)
	want := makeVar(t, "GRPCURL_VERSION")
	got := ""
	for _, in := range d.stages["build"].body {
		if v, ok := strings.CutPrefix(in.args, "GRPCURL_VERSION="); ok && in.cmd == "ARG" {
			got = v
		}
	}
	if got != want {
		t.Errorf("Dockerfile GRPCURL_VERSION = %q, Makefile says %q", got, want)
	}
}

// TestDaemonSetRunsWhatTheImagesHold ties the manifests to the Dockerfile:
// each container runs a binary its image target carries, as the user the
// image declares.
func TestDaemonSetRunsWhatTheImagesHold(t *testing.T) {
	d := loadDockerfile(t)
	in := loadInstall(t, NetworkPolicy)
	for _, c := range in.ds.Spec.Template.Spec.Containers {
		t.Run(c.Name, func(t *testing.T) {
			s, ok := d.stages[c.Name]
			if !ok {
				t.Fatalf("no Dockerfile target %q for container %s", c.Name, c.Name)
			}
			carried := map[string]bool{}
			for _, dst := range copiesFromBuild(t, s) {
				carried[dst] = true
			}
			run := [][]string{c.Command}
			for _, p := range []*corev1.Probe{c.StartupProbe, c.ReadinessProbe, c.LivenessProbe} {
				if p != nil && p.Exec != nil {
					run = append(run, p.Exec.Command)
				}
			}
			for _, cmd := range run {
				if len(cmd) == 0 || !carried[cmd[0]] {
					t.Errorf("container %s runs %v, which target %s does not carry (it carries %v)", c.Name, cmd, c.Name, slices.Sorted(maps.Keys(carried)))
				}
			}
			uid, _, _ := strings.Cut(lastArg(s, "USER"), ":")
			if sc := c.SecurityContext; sc == nil || sc.RunAsUser == nil || fmt.Sprint(*sc.RunAsUser) != uid {
				t.Errorf("container %s runAsUser differs from the image USER %s", c.Name, uid)
			}
		})
	}
}

func TestDockerignoreKeepsSources(t *testing.T) {
	text, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(text), "\n") {
		pattern := strings.TrimSpace(line)
		if pattern == "" || strings.HasPrefix(pattern, "#") {
			continue
		}
		for _, needed := range []string{"go.mod", "go.sum", "decider", "queuer", "proto", "internal"} {
			if ok, _ := filepath.Match(pattern, needed); ok {
				t.Errorf(".dockerignore pattern %q excludes %s, which the build needs", pattern, needed)
			}
		}
	}
}
