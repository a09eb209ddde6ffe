package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"github.com/tollgate/tollgate/test/netsim"
)

// kernelHasSCTP reports whether this kernel opens SCTP sockets. The
// suites' SCTP servers and clients (agnhost) need them; without them
// (CONFIG_IP_SCTP unset) no SCTP connection can be made, policy or not.
// A variable, so that tests can pretend either way.
var kernelHasSCTP = netsim.KernelHasSCTP

// sctpServerMarker is what names an SCTP server in the network-policy-api
// conformance manifests: `agnhost porter` serves SCTP on the port of each
// SERVE_SCTP_PORT_<port> variable.
const sctpServerMarker = "SERVE_SCTP_PORT_"

// stripSCTPServers removes from a conformance manifest every list item that
// starts with "- name:" and holds an SCTP server variable (the containers
// running `agnhost porter` for SCTP), and returns the manifest and the names
// of the items removed. An item is its "- name:" line and every following
// line indented deeper than its dash (blank lines included). The text is
// edited as lines, not parsed, because the v0.2.0 manifests are Go
// templates that are not YAML until the suite fills them in.
func stripSCTPServers(manifest []byte) ([]byte, []string) {
	lines := strings.SplitAfter(string(manifest), "\n")
	var out bytes.Buffer
	var removed []string
	for i := 0; i < len(lines); {
		indent, name, ok := listItemName(lines[i])
		if !ok {
			out.WriteString(lines[i])
			i++
			continue
		}
		end := i + 1
		for end < len(lines) && deeperThan(lines[end], indent) {
			end++
		}
		item := strings.Join(lines[i:end], "")
		if !strings.Contains(item, sctpServerMarker) || strings.HasPrefix(name, sctpServerMarker) {
			// Keep it; nested items are looked at on their own.
			out.WriteString(lines[i])
			i++
			continue
		}
		removed = append(removed, name)
		i = end
	}
	return out.Bytes(), removed
}

// listItemName reports whether line opens a list item "- name: NAME", with
// the column of its dash.
func listItemName(line string) (indent int, name string, ok bool) {
	trimmed := strings.TrimLeft(line, " ")
	rest, found := strings.CutPrefix(trimmed, "- name:")
	if !found {
		return 0, "", false
	}
	return len(line) - len(trimmed), strings.TrimSpace(rest), true
}

// deeperThan reports whether line belongs to a list item whose dash is at
// column indent: blank, or indented further.
func deeperThan(line string, indent int) bool {
	if strings.TrimSpace(line) == "" {
		return true
	}
	return len(line)-len(strings.TrimLeft(line, " ")) > indent
}

// stripSCTPCommand is `referee strip-sctp IN OUT`. On a kernel with SCTP
// it copies IN as it is: the servers work there.
func stripSCTPCommand(args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("usage: referee strip-sctp IN OUT")
	}
	in, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	if kernelHasSCTP() {
		fmt.Printf("strip-sctp: this kernel has SCTP sockets: %s kept as it is\n", args[0])
		return os.WriteFile(args[1], in, 0o644)
	}
	out, removed := stripSCTPServers(in)
	if len(removed) == 0 {
		return fmt.Errorf("%s: no SCTP server containers found: the suite's manifests changed, look again", args[0])
	}
	if bytes.Contains(out, []byte(sctpServerMarker)) {
		return fmt.Errorf("%s: SCTP servers left after stripping", args[0])
	}
	if err := os.WriteFile(args[1], out, 0o644); err != nil {
		return err
	}
	fmt.Printf("strip-sctp: removed %d SCTP server containers from %s: %s\n", len(removed), args[0], strings.Join(removed, ", "))
	return nil
}

// sctpProbeMarker starts the line the patched suite logs for each SCTP
// probe it does not make; the results parser looks for it.
const sctpProbeMarker = "tollgate-referee: SCTP probe not run"

// skipSCTPProbes patches network-policy-api's conformance helper (the
// source of conformance/utils/kubernetes/helper.go) so that PokeServer
// logs an SCTP probe instead of making it. Without SCTP in the kernel every
// SCTP probe fails, and in v0.2.0 a failed probe ends its subtest
// (require.Eventually): the TCP and UDP probes after it would never run.
// v0.1.7's PokeServer returns whether the probe went as expected; the
// patched one returns true for the probe it skips, and the log line makes
// the case count as "passed, SCTP probes not run", never as passed.
func skipSCTPProbes(src []byte) ([]byte, error) {
	lines := strings.SplitAfter(string(src), "\n")
	for i, line := range lines {
		if !strings.HasPrefix(line, "func PokeServer(t *testing.T,") {
			continue
		}
		sig := strings.TrimSpace(line)
		if !strings.Contains(sig, " protocol, ") || !strings.Contains(sig, "shouldConnect bool") || !strings.HasSuffix(sig, "{") {
			return nil, fmt.Errorf("PokeServer's signature changed, look again: %s", sig)
		}
		ret := "return"
		if strings.HasSuffix(sig, ") bool {") {
			ret = "return true"
		}
		guard := fmt.Sprintf("\tif protocol == \"sctp\" {\n"+
			"\t\tt.Logf(\"%s (the kernel has no SCTP sockets): %%s/%%s -> %%s:%%d, shouldConnect=%%v\", clientNamespace, clientPod, targetHost, targetPort, shouldConnect)\n"+
			"\t\t%s\n\t}\n", sctpProbeMarker, ret)
		out := strings.Join(lines[:i+1], "") + guard + strings.Join(lines[i+1:], "")
		return []byte(out), nil
	}
	return nil, fmt.Errorf("no PokeServer function found: the suite's helper changed, look again")
}

// skipSCTPProbesCommand is `referee skip-sctp-probes FILE`, in place. On a
// kernel with SCTP it leaves FILE alone.
func skipSCTPProbesCommand(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: referee skip-sctp-probes FILE")
	}
	if kernelHasSCTP() {
		fmt.Printf("skip-sctp-probes: this kernel has SCTP sockets: %s kept as it is\n", args[0])
		return nil
	}
	src, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	out, err := skipSCTPProbes(src)
	if err != nil {
		return fmt.Errorf("%s: %w", args[0], err)
	}
	if err := os.WriteFile(args[0], out, 0o644); err != nil {
		return err
	}
	fmt.Printf("skip-sctp-probes: PokeServer in %s logs SCTP probes instead of making them\n", args[0])
	return nil
}
