package engine

import (
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// selector is a compiled metav1.LabelSelector. Matching does not allocate.
type selector struct {
	reqs []requirement
	// none marks a selector that can match nothing (it was invalid).
	none bool
}

type operator uint8

const (
	opIn operator = iota
	opNotIn
	opExists
	opDoesNotExist
)

type requirement struct {
	key    string
	op     operator
	values []string
}

// matchAll is the compiled empty selector.
var matchAll = &selector{}

// compileSelector compiles a label selector. An empty selector matches
// everything; an invalid one matches nothing and returns an error that says
// why (the caller records it as a warning).
func compileSelector(ls *metav1.LabelSelector) (*selector, error) {
	if ls == nil || (len(ls.MatchLabels) == 0 && len(ls.MatchExpressions) == 0) {
		return matchAll, nil
	}
	s := &selector{}
	keys := make([]string, 0, len(ls.MatchLabels))
	for k := range ls.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic order
	for _, k := range keys {
		s.reqs = append(s.reqs, requirement{key: k, op: opIn, values: []string{ls.MatchLabels[k]}})
	}
	for _, e := range ls.MatchExpressions {
		r := requirement{key: e.Key, values: slices.Clone(e.Values)}
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			r.op = opIn
		case metav1.LabelSelectorOpNotIn:
			r.op = opNotIn
		case metav1.LabelSelectorOpExists:
			r.op = opExists
		case metav1.LabelSelectorOpDoesNotExist:
			r.op = opDoesNotExist
		default:
			return &selector{none: true}, fmt.Errorf("label selector: unknown operator %q", e.Operator)
		}
		if (r.op == opIn || r.op == opNotIn) && len(r.values) == 0 {
			return &selector{none: true}, fmt.Errorf("label selector: operator %s on key %q needs values", e.Operator, e.Key)
		}
		slices.Sort(r.values)
		r.values = slices.Compact(r.values)
		if (r.op == opExists || r.op == opDoesNotExist) && len(r.values) != 0 {
			return &selector{none: true}, fmt.Errorf("label selector: operator %s on key %q takes no values", e.Operator, e.Key)
		}
		s.reqs = append(s.reqs, r)
	}
	return s, nil
}

// empty reports whether the selector matches every label set.
func (s *selector) empty() bool { return !s.none && len(s.reqs) == 0 }

// matches reports whether labels satisfy every requirement.
func (s *selector) matches(labels map[string]string) bool {
	if s.none {
		return false
	}
	for i := range s.reqs {
		r := &s.reqs[i]
		v, ok := labels[r.key]
		switch r.op {
		case opIn:
			if !ok || !slices.Contains(r.values, v) {
				return false
			}
		case opNotIn:
			if ok && slices.Contains(r.values, v) {
				return false
			}
		case opExists:
			if !ok {
				return false
			}
		case opDoesNotExist:
			if ok {
				return false
			}
		}
	}
	return true
}

// nsSet is a compiled namespace selector: one bit per namespace of the
// snapshot, so matching a peer's namespace costs a bit test.
type nsSet []uint64

func (b nsSet) has(i int) bool { return b[i>>6]&(1<<(uint(i)&63)) != 0 }

// namespaceSet evaluates sel against every namespace of the snapshot.
func (c *compiler) namespaceSet(sel *selector) nsSet {
	b := make(nsSet, (len(c.namespaces)+63)/64)
	for i, ns := range c.namespaces {
		if sel.matches(ns.labels) {
			b[i>>6] |= 1 << (uint(i) & 63)
		}
	}
	return b
}

// labelIndex maps a label key and value to the pods that carry it.
type labelIndex map[string]map[string][]*pod

func newLabelIndex(pods []*pod) labelIndex {
	idx := labelIndex{}
	for _, pd := range pods {
		for k, v := range pd.labels {
			byValue := idx[k]
			if byValue == nil {
				byValue = map[string][]*pod{}
				idx[k] = byValue
			}
			byValue[v] = append(byValue[v], pd)
		}
	}
	return idx
}

// forEachMatch calls fn with every pod of pods that sel matches, once each.
// With an index and an In requirement in sel, only the pods carrying one
// of that requirement's values are tried; otherwise every pod is.
func (idx labelIndex) forEachMatch(pods []*pod, sel *selector, fn func(*pod)) {
	if idx != nil && !sel.none {
		for i := range sel.reqs {
			r := &sel.reqs[i]
			if r.op != opIn {
				continue
			}
			// The values are distinct (compileSelector sorts and compacts
			// them) and a pod has one value per key, so no pod comes twice.
			for _, v := range r.values {
				for _, pd := range idx[r.key][v] {
					if sel.matches(pd.labels) {
						fn(pd)
					}
				}
			}
			return
		}
	}
	for _, pd := range pods {
		if sel.matches(pd.labels) {
			fn(pd)
		}
	}
}
