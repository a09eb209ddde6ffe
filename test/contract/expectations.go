package contract

import (
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	tollgatev1 "github.com/tollgate/tollgate/proto/tollgate/v1"
)

// Expectations describe what the decider under test has loaded: the pods it
// knows, which of them Watch reports as selected on one node, and the
// verdicts of chosen connections. The kit checks the contract's rules on
// these connections; it never needs to know where the decider gets its
// policy from. examples.yaml (Examples) is an annotated example.
type Expectations struct {
	// Node is the node_name of the kit's WatchRequests.
	Node string `json:"node"`
	// Pods are the pods the decider knows: their connections get one
	// explanation per evaluated direction.
	Pods []Pod `json:"pods"`
	// State is what the decider answers before any change.
	State `json:",inline"`
	// Change, when set, makes the kit change the decider's policy and check
	// the Watch messages that follow.
	Change *Change `json:"change,omitempty"`

	// dir is where Change commands run: the expectations file's directory.
	dir string
}

// Pod is one pod the decider knows.
type Pod struct {
	// Name is "namespace/name"; with a slash the kit also checks that
	// explanations name this pod.
	Name string `json:"name"`
	// IPs holds at most one IPv4 and one IPv6 address.
	IPs []string `json:"ips"`

	v4, v6 netip.Addr
}

// State is the decider's behaviour at one point: what Watch selects and
// what Decide answers.
type State struct {
	// Selected lists the pods (by name) or addresses Watch must report for
	// Node; absent or empty means none.
	Selected []string `json:"selected"`
	// Grid gives the verdict of every pair of pods on one protocol and port.
	Grid *Grid `json:"grid,omitempty"`
	// Cases are single connections with their verdicts.
	Cases []Case `json:"cases,omitempty"`
}

// Grid is a verdict table between pods: rows are sources, columns are the
// destinations in the order of Expectations.Pods.
type Grid struct {
	// Protocol is TCP, UDP, SCTP or ICMP.
	Protocol string `json:"protocol"`
	// Port is the destination port (ignored for ICMP).
	Port uint32 `json:"port"`
	// Rows maps a source pod to one cell per pod, separated by spaces:
	// "." allowed, "X" denied.
	Rows map[string]string `json:"rows"`
}

// Case is one connection and its verdict.
type Case struct {
	// From and To are pod names or IP addresses (an address that is not a
	// pod's is external).
	From string `json:"from"`
	To   string `json:"to"`
	// Protocol is TCP, UDP, SCTP or ICMP.
	Protocol string `json:"protocol"`
	// Port is the destination port (ignored for ICMP).
	Port uint32 `json:"port"`
	// ViaService says the destination was reached through a service.
	ViaService bool `json:"viaService"`
	// Verdict is allow or deny.
	Verdict string `json:"verdict"`
}

// Change describes one policy change the kit makes, and what the decider
// answers afterwards.
type Change struct {
	// Run is the command (argv, run in the expectations file's directory)
	// that changes the decider's policy.
	Run []string `json:"run"`
	// Revert is the command that restores the policy of the top-level
	// state; optional, but without it the decider stays changed.
	Revert []string `json:"revert,omitempty"`
	// Timeout bounds how long the decider may take to announce the change
	// (a Go duration; default 15s).
	Timeout string `json:"timeout,omitempty"`
	// State is what the decider answers after the change.
	State `json:",inline"`

	timeout time.Duration
}

//go:embed examples.yaml
var examplesYAML []byte

// Examples returns the expectations of a decider loaded with the example
// cluster and policies of deploy/examples (cluster.yaml and policies.yaml,
// on node-1). They have no Change: the kit cannot know how to change such a
// decider's policy.
func Examples() *Expectations {
	e, err := ParseExpectations(examplesYAML, "")
	if err != nil {
		panic("contract: the embedded examples.yaml is invalid: " + err.Error())
	}
	return e
}

// LoadExpectations reads and validates an expectations file (YAML or JSON).
func LoadExpectations(path string) (*Expectations, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("expectations: %w", err)
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("expectations: %w", err)
	}
	e, err := ParseExpectations(b, abs)
	if err != nil {
		return nil, fmt.Errorf("expectations %s: %w", path, err)
	}
	return e, nil
}

// ParseExpectations decodes and validates expectations; Change commands
// will run in dir.
func ParseExpectations(b []byte, dir string) (*Expectations, error) {
	var e Expectations
	if err := yaml.UnmarshalStrict(b, &e); err != nil {
		return nil, err
	}
	e.dir = dir
	if err := e.validate(); err != nil {
		return nil, err
	}
	return &e, nil
}

func (e *Expectations) validate() error {
	if e.Node == "" {
		return errors.New("node: must be set (the node whose pods Watch reports)")
	}
	seen := map[string]bool{}
	addrs := map[netip.Addr]string{}
	for i := range e.Pods {
		p := &e.Pods[i]
		if p.Name == "" || seen[p.Name] {
			return fmt.Errorf("pods[%d]: name %q is empty or repeated", i, p.Name)
		}
		seen[p.Name] = true
		if _, err := netip.ParseAddr(p.Name); err == nil {
			return fmt.Errorf("pods[%d]: name %q is an address", i, p.Name)
		}
		for _, s := range p.IPs {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				return fmt.Errorf("pods[%d] (%s): %q is not an IP address", i, p.Name, s)
			}
			a = a.Unmap()
			slot := &p.v6
			if a.Is4() {
				slot = &p.v4
			}
			if slot.IsValid() {
				return fmt.Errorf("pods[%d] (%s): more than one address of a family", i, p.Name)
			}
			if other, dup := addrs[a]; dup {
				return fmt.Errorf("pods[%d] (%s): %s is also %s's", i, p.Name, a, other)
			}
			*slot, addrs[a] = a, p.Name
		}
		if !p.v4.IsValid() && !p.v6.IsValid() {
			return fmt.Errorf("pods[%d] (%s): no address", i, p.Name)
		}
	}
	if err := e.State.validate(e); err != nil {
		return err
	}
	if c := e.Change; c != nil {
		if len(c.Run) == 0 {
			return errors.New("change.run: must name a command")
		}
		c.timeout = 15 * time.Second
		if c.Timeout != "" {
			d, err := time.ParseDuration(c.Timeout)
			if err != nil || d <= 0 {
				return fmt.Errorf("change.timeout: %q is not a positive duration", c.Timeout)
			}
			c.timeout = d
		}
		if err := c.State.validate(e); err != nil {
			return fmt.Errorf("change: %w", err)
		}
	}
	return nil
}

func (s *State) validate(e *Expectations) error {
	for _, name := range s.Selected {
		if _, err := e.endpoint(name); err != nil {
			return fmt.Errorf("selected: %w", err)
		}
	}
	if g := s.Grid; g != nil {
		if _, err := protocol(g.Protocol); err != nil {
			return fmt.Errorf("grid: %w", err)
		}
		if len(g.Rows) == 0 {
			return errors.New("grid: no rows")
		}
		for from, row := range g.Rows {
			fromPod := e.pod(from)
			if fromPod == nil {
				return fmt.Errorf("grid: row %q is not a pod", from)
			}
			cells := strings.Fields(row)
			if len(cells) != len(e.Pods) {
				return fmt.Errorf("grid: row %s has %d cells, want one per pod (%d)", from, len(cells), len(e.Pods))
			}
			for i, c := range cells {
				if c != "." && c != "X" {
					return fmt.Errorf("grid: row %s, column %s: %q is neither . nor X", from, e.Pods[i].Name, c)
				}
				if e.Pods[i].Name == from && c != "." {
					return fmt.Errorf("grid: row %s: a pod reaching itself directly is always allowed", from)
				}
			}
		}
	}
	for i, c := range s.Cases {
		if _, err := protocol(c.Protocol); err != nil {
			return fmt.Errorf("cases[%d]: %w", i, err)
		}
		if c.Verdict != "allow" && c.Verdict != "deny" {
			return fmt.Errorf("cases[%d]: verdict %q, want allow or deny", i, c.Verdict)
		}
		if c.Port > 65535 {
			return fmt.Errorf("cases[%d]: port %d is greater than 65535", i, c.Port)
		}
		from, err := e.endpoint(c.From)
		if err != nil {
			return fmt.Errorf("cases[%d].from: %w", i, err)
		}
		to, err := e.endpoint(c.To)
		if err != nil {
			return fmt.Errorf("cases[%d].to: %w", i, err)
		}
		if len(families(from, to)) == 0 {
			return fmt.Errorf("cases[%d]: %s and %s share no address family", i, c.From, c.To)
		}
		if from.pod != nil && from.pod == to.pod && !c.ViaService && c.Verdict != "allow" {
			return fmt.Errorf("cases[%d]: a pod reaching itself directly is always allowed", i)
		}
	}
	return nil
}

// pod returns the pod called name, or nil.
func (e *Expectations) pod(name string) *Pod {
	for i := range e.Pods {
		if e.Pods[i].Name == name {
			return &e.Pods[i]
		}
	}
	return nil
}

// endpoint is one end of a connection: a pod, or an external address (or a
// pod named by one of its addresses).
type endpoint struct {
	name   string
	pod    *Pod
	v4, v6 netip.Addr
}

// endpoint resolves a pod name or an address.
func (e *Expectations) endpoint(s string) (endpoint, error) {
	if p := e.pod(s); p != nil {
		return endpoint{name: s, pod: p, v4: p.v4, v6: p.v6}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return endpoint{}, fmt.Errorf("%q is neither a pod nor an IP address", s)
	}
	a = a.Unmap()
	ep := endpoint{name: s}
	for i := range e.Pods {
		if p := &e.Pods[i]; p.v4 == a || p.v6 == a {
			ep.pod = p
		}
	}
	if a.Is4() {
		ep.v4 = a
	} else {
		ep.v6 = a
	}
	return ep, nil
}

// families lists the address families both ends have: 4 and/or 6.
func families(a, b endpoint) []int {
	var f []int
	if a.v4.IsValid() && b.v4.IsValid() {
		f = append(f, 4)
	}
	if a.v6.IsValid() && b.v6.IsValid() {
		f = append(f, 6)
	}
	return f
}

func (ep endpoint) addr(family int) netip.Addr {
	if family == 4 {
		return ep.v4
	}
	return ep.v6
}

func protocol(s string) (tollgatev1.Protocol, error) {
	switch strings.ToUpper(s) {
	case "TCP":
		return tollgatev1.Protocol_PROTOCOL_TCP, nil
	case "UDP":
		return tollgatev1.Protocol_PROTOCOL_UDP, nil
	case "SCTP":
		return tollgatev1.Protocol_PROTOCOL_SCTP, nil
	case "ICMP":
		return tollgatev1.Protocol_PROTOCOL_ICMP, nil
	}
	return 0, fmt.Errorf("protocol %q: want TCP, UDP, SCTP or ICMP", s)
}

// probe is one connection the kit asks about, in one address family.
type probe struct {
	what     string // for messages: "x/a -> y/b TCP 80 (10.244.1.1 -> 10.244.1.5)"
	from, to endpoint
	src, dst netip.Addr
	proto    tollgatev1.Protocol
	port     uint32
	via      bool
	allow    bool
}

// key identifies a probe's connection, to compare states.
type key struct {
	src, dst netip.Addr
	proto    tollgatev1.Protocol
	port     uint32
	via      bool
}

func (p probe) key() key { return key{p.src, p.dst, p.proto, p.port, p.via} }

// self reports whether the probe is a pod reaching its own address
// directly, which the contract exempts from policy.
func (p probe) self() bool { return !p.via && p.from.pod != nil && p.from.pod == p.to.pod }

// probes expands a state into connections: every grid cell and case in
// every address family both ends have, then every pod reaching itself.
func (e *Expectations) probes(s *State) []probe {
	var out []probe
	addOne := func(from, to endpoint, family int, proto tollgatev1.Protocol, port uint32, via, allow bool) {
		p := probe{from: from, to: to, src: from.addr(family), dst: to.addr(family), proto: proto, port: port, via: via, allow: allow}
		svc, portText := "", fmt.Sprintf(" %d", port)
		if via {
			svc = " via a service"
		}
		if proto == tollgatev1.Protocol_PROTOCOL_ICMP {
			portText = ""
		}
		p.what = fmt.Sprintf("%s -> %s %s%s%s (%s -> %s)", from.name, to.name,
			strings.TrimPrefix(proto.String(), "PROTOCOL_"), portText, svc, p.src, p.dst)
		out = append(out, p)
	}
	add := func(from, to endpoint, proto tollgatev1.Protocol, port uint32, via, allow bool) {
		for _, f := range families(from, to) {
			addOne(from, to, f, proto, port, via, allow)
		}
	}
	if g := s.Grid; g != nil {
		proto, _ := protocol(g.Protocol)
		for _, fp := range e.Pods {
			row, ok := g.Rows[fp.Name]
			if !ok {
				continue
			}
			from, _ := e.endpoint(fp.Name)
			for i, cell := range strings.Fields(row) {
				to, _ := e.endpoint(e.Pods[i].Name)
				add(from, to, proto, g.Port, false, cell == ".")
			}
		}
	}
	for _, c := range s.Cases {
		from, _ := e.endpoint(c.From)
		to, _ := e.endpoint(c.To)
		proto, _ := protocol(c.Protocol)
		add(from, to, proto, c.Port, c.ViaService, c.Verdict == "allow")
	}
	// Every pod reaching itself directly is allowed, whatever the policy:
	// add that connection where the state does not already ask it.
	seen := map[key]bool{}
	for _, p := range out {
		seen[p.key()] = true
	}
	for _, pod := range e.Pods {
		ep, _ := e.endpoint(pod.Name)
		for _, f := range families(ep, ep) {
			if !seen[key{ep.addr(f), ep.addr(f), tollgatev1.Protocol_PROTOCOL_TCP, 80, false}] {
				addOne(ep, ep, f, tollgatev1.Protocol_PROTOCOL_TCP, 80, false, true)
			}
		}
	}
	return out
}

// selected returns the addresses Watch must report in a state, by family.
func (e *Expectations) selected(s *State) (v4, v6 []netip.Addr) {
	for _, name := range s.Selected {
		ep, _ := e.endpoint(name)
		if ep.v4.IsValid() {
			v4 = append(v4, ep.v4)
		}
		if ep.v6.IsValid() {
			v6 = append(v6, ep.v6)
		}
	}
	return v4, v6
}
