package explain

import (
	"fmt"
	"io"
	"strings"

	"github.com/tollgate/tollgate/internal/grid"
)

// writeTable prints doc for people.
func writeTable(w io.Writer, doc Document) error {
	var b strings.Builder
	switch {
	case doc.WhatIf != nil:
		writeWhatIf(&b, doc.WhatIf)
	case doc.Pod != nil:
		writePod(&b, doc.Pod)
	case doc.Mode == "matrix":
		for i, m := range doc.Matrices {
			if i > 0 {
				b.WriteString("\n")
			}
			fmt.Fprintf(&b, "Who reaches whom on %s:\n", connPort(m.Protocol, m.Port))
			if err := grid.Write(&b, m.Pods, func(r, c int) bool { return m.Verdicts[r][c] == "allow" }); err != nil {
				return err
			}
		}
	default:
		for i, f := range doc.Flows {
			if i > 0 {
				b.WriteString("\n")
			}
			fmt.Fprintf(&b, "%s: %s\n", connTitle(f.Connection), strings.ToUpper(f.Verdict))
			writeWalk(&b, f.Connection, f.Result)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func connPort(proto string, port uint16) string {
	if proto == "ICMP" {
		return "ICMP"
	}
	return fmt.Sprintf("%d/%s", port, proto)
}

func endpointName(e Endpoint) string {
	if e.Pod == "" {
		return e.IP
	}
	return fmt.Sprintf("%s (%s)", e.Pod, e.IP)
}

func connTitle(c Connection) string {
	return fmt.Sprintf("%s -> %s %s", endpointName(c.From), endpointName(c.To), connPort(c.Protocol, c.Port))
}

func policyName(p PolicyRef) string {
	if p.Namespace != "" {
		return fmt.Sprintf("%s %s/%s", p.Kind, p.Namespace, p.Name)
	}
	return p.Kind + " " + p.Name
}

func ruleName(r *RuleRef) string {
	if r.Name != "" {
		return fmt.Sprintf("rule %d %q", r.Index, r.Name)
	}
	return fmt.Sprintf("rule %d", r.Index)
}

// writeWalk prints each direction of a result and its stages.
func writeWalk(b *strings.Builder, c Connection, r Result) {
	if r.SamePod {
		b.WriteString("  the pod reaches its own IP directly: not subject to policy\n")
		return
	}
	for _, end := range []struct {
		dir string
		ep  Endpoint
	}{{"egress", c.From}, {"ingress", c.To}} {
		if end.ep.Pod == "" {
			fmt.Fprintf(b, "  %s: %s is not a pod: not evaluated\n", end.dir, end.ep.IP)
			continue
		}
		for _, d := range r.Directions {
			if d.Direction == end.dir {
				writeDirection(b, d)
			}
		}
	}
}

// writeDirection prints one direction and its stages.
func writeDirection(b *strings.Builder, d Direction) {
	fmt.Fprintf(b, "  %s of %s: %s\n", d.Direction, d.Pod, strings.ToUpper(d.Verdict))
	selected := false
	for _, st := range d.Steps {
		selected = selected || len(st.Policies) > 0
	}
	if !selected {
		fmt.Fprintf(b, "    no policy selects this pod for %s: allowed by default\n", d.Direction)
		return
	}
	for _, st := range d.Steps {
		for i, line := range stepText(st) {
			label := ""
			if i == 0 {
				label = st.Stage
			}
			fmt.Fprintf(b, "    %-14s %s\n", label, line)
		}
	}
}

// stepText says what one stage did, in one or two lines: the policies that
// select the pod, then what matched.
func stepText(st Step) []string {
	if st.Stage == "default" {
		return []string{"no policy decided: Allow"}
	}
	if len(st.Policies) == 0 {
		return []string{"no policy selects this pod"}
	}
	names := make([]string, len(st.Policies))
	for i, p := range st.Policies {
		names[i] = policyName(p)
	}
	sel := "selected by " + strings.Join(names, ", ")
	switch {
	case st.Outcome == "no-match":
		return []string{sel, "no rule matches"}
	case st.Rule == nil:
		return []string{sel, "no rule allows it: " + st.Action}
	case st.Outcome == "pass":
		return []string{sel, fmt.Sprintf("%s %s matches: Pass, on to the next tier", policyName(*st.Policy), ruleName(st.Rule))}
	}
	return []string{sel, fmt.Sprintf("%s %s matches: %s", policyName(*st.Policy), ruleName(st.Rule), st.Action)}
}

func writeWhatIf(b *strings.Builder, w *WhatIf) {
	fmt.Fprintf(b, "With %s: %d of %d connections change verdict\n", strings.Join(w.Files, ", "), len(w.Changes), w.Checked)
	for _, c := range w.Changes {
		fmt.Fprintf(b, "\n%s: %s -> %s\n", connTitle(c.Connection), strings.ToUpper(c.Before.Verdict), strings.ToUpper(c.After.Verdict))
		for _, side := range []struct {
			name string
			r    Result
		}{{"before", c.Before}, {"after", c.After}} {
			fmt.Fprintf(b, "  %s:\n", side.name)
			for _, d := range side.r.Directions {
				fmt.Fprintf(b, "    %s\n", d.Reason)
			}
		}
	}
}

func writePod(b *strings.Builder, p *Pod) {
	fmt.Fprintf(b, "Pod %s/%s on %s, IPs %s\n", p.Namespace, p.Name, p.Node, strings.Join(p.IPs, ", "))
	for _, dir := range []struct {
		name, peers string
		policies    []SelectingPolicy
	}{{"egress", "to", p.Egress}, {"ingress", "from", p.Ingress}} {
		if len(dir.policies) == 0 {
			fmt.Fprintf(b, "\n%s: no policy selects this pod\n", dir.name)
			continue
		}
		fmt.Fprintf(b, "\n%s:\n", dir.name)
		isolated := false
		for _, sp := range dir.policies {
			isolated = isolated || sp.Stage == "NetworkPolicy"
		}
		for _, sp := range dir.policies {
			switch {
			case sp.Priority != nil:
				fmt.Fprintf(b, "  %s (%s stage, priority %d)\n", policyName(sp.Policy), sp.Stage, *sp.Priority)
			case sp.Stage == "baseline" && isolated:
				fmt.Fprintf(b, "  %s (baseline stage; not reached: NetworkPolicies select this pod)\n", policyName(sp.Policy))
			case sp.Stage != "NetworkPolicy":
				fmt.Fprintf(b, "  %s (%s stage)\n", policyName(sp.Policy), sp.Stage)
			default:
				fmt.Fprintf(b, "  %s\n", policyName(sp.Policy))
			}
			if len(sp.Rules) == 0 && sp.Stage == "NetworkPolicy" {
				fmt.Fprintf(b, "    no %s rules: isolates the pod and allows nothing by itself\n", dir.name)
			}
			for _, r := range sp.Rules {
				writeRule(b, r, dir.peers)
			}
		}
	}
}

func writeRule(b *strings.Builder, r Rule, peers string) {
	ports := "any port"
	switch {
	case len(r.Ports) > 0:
		ports = strings.Join(r.Ports, ", ")
	case !r.AnyPort:
		ports = "no port (none of its ports could be used)"
	}
	fmt.Fprintf(b, "    %s: %s on %s\n", ruleName(&RuleRef{Index: r.Index, Name: r.Name}), r.Action, ports)
	switch {
	case r.AllPeers:
		fmt.Fprintf(b, "      %s anywhere\n", peers)
	case len(r.Peers) == 0:
		fmt.Fprintf(b, "      %s nowhere (none of its peers could be used)\n", peers)
	}
	for _, p := range r.Peers {
		line := fmt.Sprintf("      %s %s", peers, p.Description)
		switch {
		case p.Kind == "pods" && len(p.Pods) == 0:
			line += ": no pod"
		case len(p.Pods) > 0:
			line += ": " + strings.Join(p.Pods, ", ")
		case len(p.Nodes) > 0:
			line += ": " + strings.Join(p.Nodes, ", ")
		}
		b.WriteString(line + "\n")
	}
}
