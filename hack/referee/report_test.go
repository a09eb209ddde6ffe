package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// sctpNetpol is a Netpol SCTP case name.
const sctpNetpol = "[sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]"

// withSCTP pretends, for one test, that the kernel has SCTP sockets or not.
func withSCTP(t *testing.T, has bool) {
	saved := kernelHasSCTP
	kernelHasSCTP = func() bool { return has }
	t.Cleanup(func() { kernelHasSCTP = saved })
}

func TestExplain(t *testing.T) {
	withSCTP(t, false)
	tests := []struct {
		name      string
		suite     string
		c         Case
		explained bool
		stale     bool
	}{
		{"a case that passed with its SCTP probes not made", "cnp",
			Case{Name: "CNPAdminTierGress", State: NoSCTP, Failure: "12 SCTP probes not run"}, true, false},
		{"an SCTP case failing: probes are not made, so something else failed", "cnp",
			Case{Name: "CNPAdminTierEgressSCTP", State: Failed, Failure: "stderr: OTHER: protocol not supported"}, false, false},
		{"an SCTP case that passed with every probe made", "anp",
			Case{Name: "AdminNetworkPolicyIngressSCTP", State: Passed}, false, false},
		{"a TCP case failing", "cnp",
			Case{Name: "CNPAdminTierEgressTCP", State: Failed, Failure: "protocol not supported"}, false, false},
		{"the explanation belongs to another suite", "netpol",
			Case{Name: "CNPAdminTierEgressSCTP", State: NoSCTP}, false, false},
		{"a skipped Netpol SCTP case", "netpol",
			Case{Name: sctpNetpol, State: Skipped}, true, false},
		{"a failed Netpol SCTP case: it should have been skipped", "netpol",
			Case{Name: sctpNetpol, State: Failed, Failure: "failed: Had 3 wrong results in reachability matrix"}, false, false},
		{"a skipped npapi SCTP case: the runner does not skip those", "cnp",
			Case{Name: "CNPAdminTierEgressSCTP", State: Skipped}, false, false},
		{"not run is never explained", "cnp",
			Case{Name: "CNPAdminTierEgressSCTP", State: NotRun, Failure: "protocol not supported"}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := explain(tt.suite, tt.c) != nil; got != tt.explained {
				t.Errorf("explained = %v, want %v", got, tt.explained)
			}
			if got := stale(tt.suite, tt.c); got != tt.stale {
				t.Errorf("stale = %v, want %v", got, tt.stale)
			}
		})
	}
}

func TestExplanationsNeedTheirReason(t *testing.T) {
	withSCTP(t, true)
	if e := explain("cnp", Case{Name: "CNPAdminTierEgressSCTP", State: NoSCTP}); e != nil {
		t.Errorf("explained %s on a kernel with SCTP", e.ID)
	}
	if stale("anp", Case{Name: "AdminNetworkPolicyIngressSCTP", State: Passed}) {
		t.Error("a passing SCTP case is stale on a kernel with SCTP")
	}
	if got := skips("netpol"); len(got) != 0 {
		t.Errorf("skips %q on a kernel with SCTP", got)
	}
}

func TestSkips(t *testing.T) {
	withSCTP(t, false)
	if got, want := skips("netpol"), []string{`\[Feature:SCTPConnectivity\]`}; !reflect.DeepEqual(got, want) {
		t.Errorf("skips %q, want %q", got, want)
	}
	if got := skips("cnp"); len(got) != 0 {
		t.Errorf("cnp skips %q, want none", got)
	}
}

func TestJudgeAndMarkdown(t *testing.T) {
	withSCTP(t, false)
	results := []*SuiteResult{
		{Suite: netpolSuite, Command: "ginkgo --focus=Netpol netpol.test", Wall: 90 * time.Minute, Cases: []Case{
			{Name: "[sig-network] Netpol NetworkPolicy between server and client should support allow-all policy", State: Passed},
			{Name: sctpNetpol, State: Skipped},
		}},
		{Suite: cnpSuite, Command: "npapi-v0.2.0.test", Report: "docs/conformance/network-policy-api-cnp.yaml", Cases: []Case{
			{Name: "CNPAdminTierEgressTCP", State: Failed, Failure: "Expected connection to be dropped"},
			{Name: "CNPAdminTierEgressNodePeers", State: Skipped, Failure: "Skipping"},
			{Name: "CNPAdminTierGress", State: NoSCTP, Failure: "12 SCTP probes not run"},
		}},
		{Suite: anpSuite, Error: "install: rollout timed out"},
	}
	v := judge(results)
	want := []string{"cnp: CNPAdminTierEgressTCP", "cnp: CNPAdminTierEgressNodePeers", "anp: install: rollout timed out"}
	if !sameSet(v.Unexplained, want) {
		t.Errorf("unexplained %q, want %q", v.Unexplained, want)
	}
	if v.OK() || len(v.Stale) != 0 {
		t.Errorf("verdict %+v", v)
	}

	rep := &Report{Date: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC), TollgateVersion: "v0.1.0", Command: "make conformance-upstream",
		Suites: results, Evidence: map[string]string{"sctp": "socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): protocol not supported"}}
	md := rep.Markdown()
	for _, s := range []string{
		"| [sig-network] Netpol | k8s.io/kubernetes v1.35.3",
		"| 2 | 1 | 0 (0) | 0 (0) | 1 (1) | 0 | 1h30m0s |",
		"| 3 | 0 | 1 (1) | 1 (0) | 1 (0) | 0 | 0s |",
		"| CNPAdminTierGress | passed, SCTP probes not run, explained (sctp) |",
		"**Not explained:**",
		"- cnp: CNPAdminTierEgressTCP",
		"### sctp",
		"IPPROTO_SCTP): protocol not supported",
		"| " + sctpNetpol + " | skipped, explained (sctp) |",
		"Report: [docs/conformance/network-policy-api-cnp.yaml](conformance/network-policy-api-cnp.yaml)",
		"The suite itself failed:\n\n```\ninstall: rollout timed out\n```",
	} {
		if !strings.Contains(md, s) {
			t.Errorf("the report lacks %q:\n%s", s, md)
		}
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, x := range a {
		seen[x]++
	}
	for _, x := range b {
		seen[x]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}
