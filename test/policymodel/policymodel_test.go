package policymodel

import (
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestTableMarksDifferences(t *testing.T) {
	expect := func(from, to string, _ Target) bool { return NS(to) != "x" }
	observed := map[Cell]bool{}
	for _, from := range PodKeys() {
		for _, to := range PodKeys() {
			observed[Cell{from, to, TCP80}] = Want(Cell{from, to, TCP80}, expect)
		}
	}
	observed[Cell{"y/a", "x/b", TCP80}] = true
	table := Table(observed, expect, TCP80)
	if strings.Count(table, "!") != 1 {
		t.Errorf("want exactly one marked cell:\n%s", table)
	}
	if !strings.Contains(table, "X/.!") {
		t.Errorf("the wrong cell should read X/.!:\n%s", table)
	}
}

func TestManifestsAreYAML(t *testing.T) {
	for _, m := range []string{
		NP("x", "deny", "podSelector: {}\npolicyTypes: [Ingress]"),
		ANP("a", "priority: 1\nsubject: {namespaces: {}}"),
		BANP("subject: {namespaces: {}}"),
		CNP("c", "tier: Admin\npriority: 1"),
	} {
		doc := strings.TrimSuffix(m, "---\n")
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Errorf("%v:\n%s", err, m)
			continue
		}
		if obj["kind"] == nil || obj["spec"] == nil {
			t.Errorf("no kind or spec:\n%s", m)
		}
	}
	if NS("x/a") != "x" || Name("x/a") != "a" {
		t.Error("NS/Name")
	}
}
