package source

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
	"sigs.k8s.io/yaml"

	"github.com/tollgate/tollgate/decider/engine"
)

// namespaceNameLabel is the label the API server puts on every namespace,
// holding its name.
const namespaceNameLabel = "kubernetes.io/metadata.name"

// ParseError is a manifest that could not be read: malformed YAML or JSON,
// or a document that does not decode into its kind.
type ParseError struct {
	// File is the path of the file.
	File string
	// Line is the 1-based line the parser points at. For a document that
	// is well-formed but does not decode into its kind, it is the line
	// where the document starts.
	Line int
	// Doc is the 1-based index of the document in the file, 0 when unknown.
	Doc int
	Err error
}

// Error formats the error as "file:line: message".
func (e *ParseError) Error() string {
	if e.Doc > 0 {
		return fmt.Sprintf("%s:%d: document %d: %v", e.File, e.Line, e.Doc, e.Err)
	}
	return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
}

// Unwrap returns the underlying error.
func (e *ParseError) Unwrap() error { return e.Err }

// manifestFile is one file read from the directory.
type manifestFile struct {
	path string
	data []byte
}

// LoadDir reads the manifests in dir: every *.yaml, *.yml and *.json file
// directly in dir, in name order. Subdirectories and names starting with a
// dot are ignored; symbolic links are followed (as in ConfigMap mounts).
//
// A file holds one or more documents (YAML separated by ---, or JSON values
// one after another); a document is an object or a List (kind List, or
// <Kind>List of a known kind) whose items are objects. Known kinds are
// v1 Pod, Namespace and Node, networking.k8s.io/v1 NetworkPolicy,
// policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy and
// BaselineAdminNetworkPolicy, and policy.networking.k8s.io/v1alpha2
// ClusterNetworkPolicy. Objects are defaulted as the API server would where
// it matters to policy (see applyDefaults), and every namespace that a pod
// or NetworkPolicy lives in but no Namespace declares is added with the
// kubernetes.io/metadata.name label only.
//
// Unknown kinds, objects without a name, unknown fields and duplicates (the
// later object wins) are reported as warnings. Malformed files and
// documents that do not decode fail the whole load with a *ParseError.
func LoadDir(dir string) (engine.Input, []Warning, error) {
	files, err := readDir(dir)
	if err != nil {
		return engine.Input{}, nil, err
	}
	return parseFiles(files)
}

// readDir reads the manifest files of dir in name order.
func readDir(dir string) ([]manifestFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read manifests directory: %w", err)
	}
	var files []manifestFile
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		switch strings.ToLower(filepath.Ext(name)) {
		case ".yaml", ".yml", ".json":
		default:
			continue
		}
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path) // follows symbolic links
		if err != nil {
			return nil, fmt.Errorf("stat manifest: %w", err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read manifest: %w", err)
		}
		files = append(files, manifestFile{path: path, data: data})
	}
	return files, nil
}

// fingerprint identifies the content of a set of files.
func fingerprint(files []manifestFile) [sha256.Size]byte {
	h := sha256.New()
	for _, f := range files {
		fmt.Fprintf(h, "%d:%s\x00%d:", len(f.path), f.path, len(f.data))
		h.Write(f.data)
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// parseFiles decodes files into one Input.
func parseFiles(files []manifestFile) (engine.Input, []Warning, error) {
	l := &loader{index: map[string]int{}, where: map[string]string{}}
	for _, f := range files {
		if err := l.loadFile(f.path, f.data); err != nil {
			return engine.Input{}, nil, err
		}
	}
	l.addNamespaces()
	return l.in, l.warnings, nil
}

// loader accumulates the objects of all files.
type loader struct {
	in       engine.Input
	warnings []Warning
	// index maps kind/namespace/name to the object's position in its
	// slice of in, where to the file and document that declared it.
	index map[string]int
	where map[string]string
}

func (l *loader) warnf(file string, doc int, format string, args ...any) {
	l.warnings = append(l.warnings, Warning{File: file, Doc: doc, Message: fmt.Sprintf(format, args...)})
}

var utf8BOM = []byte("\xef\xbb\xbf")

func (l *loader) loadFile(path string, data []byte) error {
	data = bytes.TrimPrefix(data, utf8BOM)
	if strings.EqualFold(filepath.Ext(path), ".json") {
		return clampLine(l.loadJSON(path, data), data)
	}
	return clampLine(l.loadYAML(path, data), data)
}

// loadJSON reads a file of JSON values, one after another.
func (l *loader) loadJSON(path string, data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	for doc := 1; ; doc++ {
		start := int(dec.InputOffset())
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			off := int(dec.InputOffset())
			var se *json.SyntaxError
			if errors.As(err, &se) {
				off = int(se.Offset)
			} else if errors.Is(err, io.ErrUnexpectedEOF) {
				off = len(data)
			}
			return &ParseError{File: path, Line: lineAt(data, off), Doc: doc, Err: err}
		}
		// Point at the value, not at the whitespace before it.
		for start < len(data) && strings.ContainsRune(" \t\r\n", rune(data[start])) {
			start++
		}
		if err := l.loadDoc(path, doc, lineAt(data, start), raw); err != nil {
			return err
		}
	}
}

// clampLine keeps a ParseError's line inside the file: parsers that hit the
// end of the input point one line past a final newline.
func clampLine(err error, data []byte) error {
	var pe *ParseError
	if errors.As(err, &pe) {
		last := bytes.Count(data, []byte("\n"))
		if len(data) == 0 || data[len(data)-1] != '\n' {
			last++
		}
		pe.Line = min(pe.Line, max(last, 1))
	}
	return err
}

// lineAt returns the 1-based line of byte offset off in data.
func lineAt(data []byte, off int) int {
	off = min(max(off, 0), len(data))
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// yamlDoc is one document of a YAML stream.
type yamlDoc struct {
	firstLine int // the file line of body's first line
	body      []byte
}

// splitYAML splits a YAML stream at document markers (lines starting with
// "---"). Text after the marker on the same line belongs to the new
// document, so a body's first line is the marker's line.
func splitYAML(data []byte) []yamlDoc {
	var docs []yamlDoc
	cur := yamlDoc{firstLine: 1}
	lines := bytes.SplitAfter(data, []byte("\n"))
	for i, line := range lines {
		trimmed := bytes.TrimRight(line, "\r\n")
		if bytes.HasPrefix(trimmed, []byte("---")) && (len(trimmed) == 3 || trimmed[3] == ' ' || trimmed[3] == '\t') {
			docs = append(docs, cur)
			cur = yamlDoc{firstLine: i + 1}
			line = line[3:]
		}
		cur.body = append(cur.body, line...)
	}
	return append(docs, cur)
}

// yamlLine finds the "line N: " that YAML parser errors carry.
var yamlLine = regexp.MustCompile(`line (\d+): `)

// loadYAML reads a multi-document YAML file.
func (l *loader) loadYAML(path string, data []byte) error {
	doc := 0
	for _, d := range splitYAML(data) {
		raw, err := yaml.YAMLToJSON(d.body)
		if err != nil {
			// Parser lines are relative to the document; without one the
			// parser means the document's first line.
			line := d.firstLine
			msg := err.Error()
			if m := yamlLine.FindStringSubmatchIndex(msg); m != nil {
				n, _ := strconv.Atoi(msg[m[2]:m[3]])
				line = d.firstLine + n - 1
				msg = msg[:m[0]] + msg[m[1]:]
			}
			return &ParseError{File: path, Line: line, Doc: doc + 1, Err: errors.New(msg)}
		}
		if string(raw) == "null" {
			continue // empty, or comments only
		}
		doc++
		if err := l.loadDoc(path, doc, d.firstLine+leadingBlankLines(d.body), raw); err != nil {
			return err
		}
	}
	return nil
}

// leadingBlankLines counts the empty, comment-only and marker lines that
// open a document body.
func leadingBlankLines(body []byte) int {
	n := 0
	for _, line := range bytes.SplitAfter(body, []byte("\n")) {
		t := bytes.TrimSpace(line)
		if len(t) > 0 && t[0] != '#' {
			break
		}
		n++
	}
	return n
}

// typeMeta is what a document says about itself.
type typeMeta struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Items      []json.RawMessage `json:"items"`
}

// loadDoc decodes one document (an object or a List) starting at line.
func (l *loader) loadDoc(path string, doc, line int, raw []byte) error {
	var tm typeMeta
	if err := json.Unmarshal(raw, &tm); err != nil {
		return &ParseError{File: path, Line: line, Doc: doc, Err: fmt.Errorf("not a Kubernetes object: %w", err)}
	}
	itemKind, isList := listItemKind(tm)
	if !isList {
		return l.loadObject(path, doc, line, "", tm, raw)
	}
	for i, item := range tm.Items {
		var itm typeMeta
		if err := json.Unmarshal(item, &itm); err != nil {
			return &ParseError{File: path, Line: line, Doc: doc, Err: fmt.Errorf("list item %d is not a Kubernetes object: %w", i, err)}
		}
		if itm.Kind == "" && itm.APIVersion == "" && itemKind != "" {
			itm.APIVersion, itm.Kind = tm.APIVersion, itemKind
		}
		if err := l.loadObject(path, doc, line, fmt.Sprintf("list item %d: ", i), itm, item); err != nil {
			return err
		}
	}
	return nil
}

// listItemKind says whether tm is a list: kind List (items name their own
// kinds), or <Kind>List of a known kind in the same API version, whose
// items may omit apiVersion and kind.
func listItemKind(tm typeMeta) (itemKind string, isList bool) {
	if tm.Kind == "List" {
		return "", true
	}
	kind, ok := strings.CutSuffix(tm.Kind, "List")
	if !ok {
		return "", false
	}
	gvk := schema.FromAPIVersionAndKind(tm.APIVersion, kind)
	if _, known := kinds[gvk]; !known {
		return "", false
	}
	return kind, true
}

// kindInfo says how to decode and store one kind.
type kindInfo struct {
	namespaced bool
	// decode returns the typed object and the unknown or duplicate fields
	// it ignored.
	decode func(data []byte) (metav1.Object, []error, error)
	// store puts obj (from decode) into in, replacing the object at
	// index[key] if there is one.
	store func(in *engine.Input, index map[string]int, key string, obj metav1.Object)
}

var (
	gvkPod                        = corev1.SchemeGroupVersion.WithKind("Pod")
	gvkNamespace                  = corev1.SchemeGroupVersion.WithKind("Namespace")
	gvkNode                       = corev1.SchemeGroupVersion.WithKind("Node")
	gvkNetworkPolicy              = networkingv1.SchemeGroupVersion.WithKind("NetworkPolicy")
	gvkAdminNetworkPolicy         = schema.GroupVersion(v1alpha1.GroupVersion).WithKind("AdminNetworkPolicy")
	gvkBaselineAdminNetworkPolicy = schema.GroupVersion(v1alpha1.GroupVersion).WithKind("BaselineAdminNetworkPolicy")
	gvkClusterNetworkPolicy       = schema.GroupVersion(v1alpha2.GroupVersion).WithKind("ClusterNetworkPolicy")
)

// kinds are the kinds the decider reads.
var kinds = map[schema.GroupVersionKind]kindInfo{
	gvkPod:                kindOf(true, func(in *engine.Input) *[]*corev1.Pod { return &in.Pods }),
	gvkNamespace:          kindOf(false, func(in *engine.Input) *[]*corev1.Namespace { return &in.Namespaces }),
	gvkNode:               kindOf(false, func(in *engine.Input) *[]*corev1.Node { return &in.Nodes }),
	gvkNetworkPolicy:      kindOf(true, func(in *engine.Input) *[]*networkingv1.NetworkPolicy { return &in.NetworkPolicies }),
	gvkAdminNetworkPolicy: kindOf(false, func(in *engine.Input) *[]*v1alpha1.AdminNetworkPolicy { return &in.AdminNetworkPolicies }),
	gvkBaselineAdminNetworkPolicy: kindOf(false, func(in *engine.Input) *[]*v1alpha1.BaselineAdminNetworkPolicy {
		return &in.BaselineAdminNetworkPolicies
	}),
	gvkClusterNetworkPolicy: kindOf(false, func(in *engine.Input) *[]*v1alpha2.ClusterNetworkPolicy { return &in.ClusterNetworkPolicies }),
}

// object is a pointer to an API type.
type object[T any] interface {
	*T
	metav1.Object
}

// kindOf describes the kind whose objects are *T, stored in the Input slice
// that field points to.
func kindOf[T any, P object[T]](namespaced bool, field func(*engine.Input) *[]P) kindInfo {
	return kindInfo{
		namespaced: namespaced,
		decode: func(data []byte) (metav1.Object, []error, error) {
			obj := P(new(T))
			// Case-sensitive, like the API server; unknown and duplicate
			// fields come back as strict errors next to the object.
			strict, err := sigsjson.UnmarshalStrict(data, obj, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
			return obj, strict, err
		},
		store: func(in *engine.Input, index map[string]int, key string, obj metav1.Object) {
			list := field(in)
			if i, dup := index[key]; dup {
				(*list)[i] = obj.(P)
				return
			}
			index[key] = len(*list)
			*list = append(*list, obj.(P))
		},
	}
}

// loadObject decodes, defaults and stores one object. prefix locates it
// inside a List for messages.
func (l *loader) loadObject(path string, doc, line int, prefix string, tm typeMeta, raw []byte) error {
	gvk := schema.FromAPIVersionAndKind(tm.APIVersion, tm.Kind)
	k, ok := kinds[gvk]
	if !ok {
		if tm.Kind == "" || tm.APIVersion == "" {
			l.warnf(path, doc, "%sno apiVersion or kind; skipped", prefix)
		} else {
			l.warnf(path, doc, "%sunknown kind %s %s; skipped", prefix, tm.APIVersion, tm.Kind)
		}
		return nil
	}
	obj, strict, err := k.decode(raw)
	if err != nil {
		if strings.Contains(err.Error(), "cannot unmarshal bool into") {
			// YAML reads bare y, n, yes, no, on and off as booleans.
			err = fmt.Errorf("%w (quote YAML strings such as y, n, yes, no, on, off)", err)
		}
		return &ParseError{File: path, Line: line, Doc: doc, Err: fmt.Errorf("%s%s: %w", prefix, gvk.Kind, err)}
	}
	if obj.GetName() == "" {
		l.warnf(path, doc, "%s%s without metadata.name; skipped", prefix, gvk.Kind)
		return nil
	}
	if !k.namespaced {
		obj.SetNamespace("")
	} else if obj.GetNamespace() == "" {
		obj.SetNamespace(metav1.NamespaceDefault)
	}
	name := obj.GetName()
	if ns := obj.GetNamespace(); ns != "" {
		name = ns + "/" + name
	}
	for _, e := range strict {
		l.warnf(path, doc, "%s%s %s: %v; ignored", prefix, gvk.Kind, name, e)
	}
	applyDefaults(obj)

	key := gvk.Kind + "/" + name
	here := fmt.Sprintf("%s (document %d)", path, doc)
	if prev, dup := l.where[key]; dup {
		l.warnf(path, doc, "%s%s %s is also declared in %s; this later one is used", prefix, gvk.Kind, name, prev)
	}
	l.where[key] = here
	k.store(&l.in, l.index, key, obj)
	return nil
}

// addNamespaces labels declared namespaces with their name, as the API
// server does, and declares the namespaces that pods and NetworkPolicies
// live in but no Namespace object declares.
func (l *loader) addNamespaces() {
	declared := make(map[string]bool, len(l.in.Namespaces))
	for _, ns := range l.in.Namespaces {
		if ns.Labels == nil {
			ns.Labels = map[string]string{}
		}
		ns.Labels[namespaceNameLabel] = ns.Name
		declared[ns.Name] = true
	}
	var implied []string
	imply := func(name string) {
		if !declared[name] {
			declared[name] = true
			implied = append(implied, name)
		}
	}
	for _, p := range l.in.Pods {
		imply(p.Namespace)
	}
	for _, np := range l.in.NetworkPolicies {
		imply(np.Namespace)
	}
	slices.Sort(implied)
	for _, name := range implied {
		l.in.Namespaces = append(l.in.Namespaces, &corev1.Namespace{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{namespaceNameLabel: name}},
		})
	}
}
