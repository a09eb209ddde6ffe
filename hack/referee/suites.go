package main

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/tollgate/tollgate/deploy"
	"github.com/tollgate/tollgate/test/cluster"
)

// Suite is one upstream test suite, run against one install flavour.
type Suite struct {
	// Key names the suite on the command line: netpol, cnp or anp.
	Key string
	// Title and Source say what the suite is and where it comes from.
	Title, Source string
	// Flavour is the install manifest the suite runs against, CRDs the
	// network-policy-api CRDs it needs.
	Flavour deploy.Flavour
	CRDs    []cluster.CRDSet
	// Binary is the suite's test binary in the bin directory
	// (hack/referee/build.sh).
	Binary string
	// Short are the cases `make test` runs (-short).
	Short []string
	// command is the command line that runs the suite.
	command func(r *Run, s *Suite) []string
	// parse reads the suite's results from its output.
	parse func(r *Run) ([]Case, string, error)
}

// Versions of the suites (and of the cluster they must match).
const (
	KubeVersion     = "v1.35.3"
	NPAPICNPVersion = "v0.2.0"
	NPAPIANPVersion = "v0.1.7"
)

// Suites are the suites in the order they run.
var Suites = []*Suite{netpolSuite, cnpSuite, anpSuite}

// suiteByKey returns the suite named key.
func suiteByKey(key string) (*Suite, error) {
	for _, s := range Suites {
		if s.Key == key {
			return s, nil
		}
	}
	return nil, fmt.Errorf("unknown suite %q", key)
}

// netpolFocus is the Ginkgo focus of the whole Netpol suite: 48 NetworkPolicy
// cases and 2 API tests at v1.35.3.
const netpolFocus = "Netpol"

var netpolSuite = &Suite{
	Key:     "netpol",
	Title:   "[sig-network] Netpol",
	Source:  "k8s.io/kubernetes " + KubeVersion + " test/e2e/network/netpol (e2e framework, Ginkgo)",
	Flavour: deploy.NetworkPolicy,
	Binary:  "netpol.test",
	// TCP ingress, egress by selectors, a named port and UDP: one case
	// each, across namespaces and (as the scheduler places the pods)
	// nodes.
	Short: []string{
		"Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy",
		"Netpol NetworkPolicy between server and client should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector",
		"Netpol NetworkPolicy between server and client should allow ingress access on one named port",
		"Netpol [LinuxOnly] NetworkPolicy between server and client using UDP should enforce policy based on Ports",
	},
	command: func(r *Run, s *Suite) []string {
		focus := []string{"--focus=" + netpolFocus}
		if r.Short {
			focus = nil
			for _, c := range s.Short {
				focus = append(focus, "--focus="+regexp.QuoteMeta(c))
			}
		}
		args := []string{
			filepath.Join(r.BinDir, "ginkgo"),
			fmt.Sprintf("--procs=%d", r.NetpolProcs),
			"--timeout=4h", "--no-color", "--poll-progress-after=10m",
			"--output-dir=" + r.OutDir, "--json-report=netpol.json",
		}
		args = append(args, focus...)
		for _, skip := range skips(s.Key) {
			args = append(args, "--skip="+skip)
		}
		return append(args, filepath.Join(r.BinDir, s.Binary), "--", "--kubeconfig="+r.Kubeconfig)
	},
	parse: func(r *Run) ([]Case, string, error) {
		data, err := readFile(r.outPath("netpol.json"))
		if err != nil {
			return nil, "", err
		}
		cases, err := parseGinkgo(data)
		return cases, "", err
	},
}

var (
	// Admin tier ingress over TCP, baseline tier egress over UDP.
	cnpSuite = npapiSuite("cnp", "ClusterNetworkPolicy", NPAPICNPVersion, "ClusterNetworkPolicy",
		deploy.ClusterNetworkPolicy, cluster.ClusterNetworkPolicyCRDs,
		"CNPAdminTierIngressTCP", "CNPBaselineTierEgressUDP")
	// ANP egress over TCP, BANP ingress over UDP.
	anpSuite = npapiSuite("anp", "AdminNetworkPolicy and BaselineAdminNetworkPolicy", NPAPIANPVersion,
		"AdminNetworkPolicy,BaselineAdminNetworkPolicy", deploy.AdminNetworkPolicy, cluster.AdminNetworkPolicyCRDs,
		"AdminNetworkPolicyEgressTCP", "BaselineAdminNetworkPolicyIngressUDP")
)

// npapiSuite is network-policy-api's conformance suite at version, run for
// profiles (comma-separated) with every feature, standard and
// experimental, against flavour.
func npapiSuite(key, title, version, profiles string, flavour deploy.Flavour, crds cluster.CRDSet, short ...string) *Suite {
	return &Suite{
		Key:     key,
		Title:   "network-policy-api conformance: " + title,
		Source:  fmt.Sprintf("sigs.k8s.io/network-policy-api %s conformance, profiles %s, --all-features", version, profiles),
		Flavour: flavour,
		CRDs:    []cluster.CRDSet{crds},
		Binary:  "npapi-" + version + ".test",
		Short:   short,
		command: func(r *Run, s *Suite) []string { return npapiCommand(r, s, profiles, version) },
		parse:   parseNPAPI,
	}
}

// npapiTop is the Go test of network-policy-api's suite that runs
// conformance profiles; each conformance test is a subtest of it.
const npapiTop = "TestConformanceProfiles"

// npapiCommand runs a network-policy-api conformance suite under
// test2json, for its profiles with every feature, writing its report.
func npapiCommand(r *Run, s *Suite, profiles, version string) []string {
	run := "^" + npapiTop + "$"
	if r.Short {
		run += "/^(" + strings.Join(s.Short, "|") + ")$"
	}
	return []string{
		"go", "tool", "test2json", "-t",
		filepath.Join(r.BinDir, s.Binary), "-test.v=test2json", "-test.run=" + run, "-test.timeout=3h",
		"--conformance-profiles=" + profiles, "--all-features",
		"--organization=tollgate", "--project=tollgate", "--url=https://github.com/tollgate/tollgate",
		"--version=" + r.TollgateVersion, "--contact=tollgate maintainers",
		"--additional-info=make conformance-upstream (docs/conformance.md) on a local kubelet cluster, network-policy-api " + version + sctpNote(),
		"--report-output=" + r.reportPath(s),
	}
}

// parseNPAPI reads a network-policy-api suite's results from its test2json
// output.
func parseNPAPI(r *Run) ([]Case, string, error) {
	f, err := openFile(r.logPath(r.current))
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	return parseTest2JSON(f, npapiTop)
}

// sctpNote is what a network-policy-api report must add where the suite ran
// with its SCTP probes logged instead of made: the report counts those
// tests as passed.
func sctpNote() string {
	if kernelHasSCTP() {
		return ""
	}
	return ". This kernel has no SCTP: the suite was patched to log its SCTP probes instead of making them, so the SCTP tests verify nothing here and the tests that mix protocols passed on their TCP and UDP probes alone; docs/conformance.md counts them apart"
}
