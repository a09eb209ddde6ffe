package engine

import (
	"net/netip"
	"strings"
)

// Resolved is what the decider learned from the DNS answers that pods on
// its node received: which names a pod resolved to which addresses. The
// engine only reads it, through Tuple.DNS; the decider keeps it, with the
// TTLs, and publishes a new generation whenever it changes.
type Resolved interface {
	// Local reports whether pod (an address) is one whose DNS answers the
	// decider learns: a pod on its own node.
	Local(pod netip.Addr) bool
	// Names returns the names (normalized: lower case, no trailing dot)
	// that the pod resolved to addr. The slice must not be modified.
	Names(pod, addr netip.Addr) []string
}

// domainPattern is one compiled domainNames entry: an exact name, or with
// wildcard set, the suffix that "*." prefixes (it matches names with one or
// more labels before it).
type domainPattern struct {
	name     string
	wildcard bool
}

// NormalizeDomain lowercases a domain name and drops a trailing dot; DNS
// names are case-insensitive and "example.com." is "example.com".
func NormalizeDomain(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

// parseDomainPattern compiles a domainNames entry; ok is false for a
// pattern the API does not allow ('*' other than as a whole first label,
// empty labels, characters outside [a-zA-Z0-9_-]).
func parseDomainPattern(s string) (domainPattern, bool) {
	s = NormalizeDomain(s)
	var p domainPattern
	if rest, ok := strings.CutPrefix(s, "*."); ok {
		p.wildcard, s = true, rest
	}
	if s == "" || len(s) > 253 {
		return p, false
	}
	labels := 0
	for label := range strings.SplitSeq(s, ".") {
		labels++
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return p, false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return p, false
			}
		}
	}
	// The API wants at least two labels ("example.com", "*.example.com").
	if labels < 2 {
		return p, false
	}
	p.name = s
	return p, true
}

// matches reports whether the normalized name matches the pattern.
func (p domainPattern) matches(name string) bool {
	if !p.wildcard {
		return name == p.name
	}
	if len(name) <= len(p.name)+1 || !strings.HasSuffix(name, p.name) || name[len(name)-len(p.name)-1] != '.' {
		return false
	}
	// One or more whole labels before the suffix: none of them empty.
	prefix := name[:len(name)-len(p.name)-1]
	return prefix[0] != '.' && prefix[len(prefix)-1] != '.' && !strings.Contains(prefix, "..")
}

// String returns the pattern as written in a policy.
func (p domainPattern) String() string {
	if p.wildcard {
		return "*." + p.name
	}
	return p.name
}

// matchDomain reports whether one of the names that src resolved to dst
// matches one of the patterns, and which name did. A source pod whose DNS
// answers this decider does not learn (a pod on another node) is judged
// there, with its answers: here the peer is taken to match, since the
// connection reached this node only because the source's node let it
// through. Without any DNS knowledge (dns nil) nothing matches.
func matchDomain(patterns []domainPattern, dns Resolved, src, dst netip.Addr) (name string, ok bool) {
	if dns == nil {
		return "", false
	}
	if !dns.Local(src) {
		return RemoteDomain, true
	}
	for _, n := range dns.Names(src, dst) {
		for _, p := range patterns {
			if p.matches(n) {
				return n, true
			}
		}
	}
	return "", false
}

// RemoteDomain is Explanation.Domain when a domainNames peer was taken to
// match because the source pod's own node judges its egress.
const RemoteDomain = "(judged on the source pod's node)"
