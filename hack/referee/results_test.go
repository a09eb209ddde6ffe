package main

import (
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseGinkgo(t *testing.T) {
	data, err := os.ReadFile("testdata/ginkgo.json")
	if err != nil {
		t.Fatal(err)
	}
	cases, err := parseGinkgo(data)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range cases {
		got = append(got, string(c.State)+" "+c.Name)
	}
	want := []string{
		"skipped [sig-network] Netpol API should support creating NetworkPolicy API operations",
		"passed [sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]",
		"failed [sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("cases:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if cases[1].Duration != 61500*time.Millisecond {
		t.Errorf("duration %v, want 61.5s", cases[1].Duration)
	}
	if want := "failed: pod x-abc/a did not reach Running:\n  timed out waiting for the condition"; cases[2].Failure != want {
		t.Errorf("failure %q, want %q", cases[2].Failure, want)
	}
	if _, err := parseGinkgo([]byte("{")); err == nil {
		t.Error("a broken report parsed")
	}
}

func TestParseTest2JSON(t *testing.T) {
	f, err := os.Open("testdata/test2json.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cases, top, err := parseTest2JSON(f, "TestConformanceProfiles")
	if err != nil {
		t.Fatal(err)
	}
	want := []Case{
		{Name: "CNPAdminTierEgressNodePeers", State: Skipped,
			Failure: "suite.go:210: Skipping CNPAdminTierEgressNodePeers: suite does not support ClusterNetworkPolicyEgressNodePeers"},
		{Name: "CNPAdminTierEgressSCTP", State: Failed, Duration: 10200 * time.Millisecond,
			Failure: "helper.go:106: FAILED Command was [/agnhost connect --timeout=3s --protocol=sctp 10.244.1.5:9003]\n" +
				"helper.go:107: Expected connection to succeed from a/b to 10.244.1.5, but instead it miserably failed. stderr: OTHER: protocol not supported\n" +
				"Error:      \tCondition never satisfied"},
		{Name: "CNPAdminTierIngressTCP", State: Passed, Duration: 5500 * time.Millisecond},
	}
	if !reflect.DeepEqual(cases, want) {
		t.Errorf("cases\n%#v\nwant\n%#v", cases, want)
	}
	// The top test failed because a subtest did: nothing of its own says why.
	if top != "" {
		t.Errorf("top failure %q, want none", top)
	}
}

func TestParseTest2JSONSetupFailure(t *testing.T) {
	in := `{"Action":"run","Test":"T"}
{"Action":"output","Test":"T","Output":"    suite.go:170: Error Trace: kubernetes/helper.go:140\n"}
{"Action":"output","Test":"T","Output":"        \tError:      \tReceived unexpected error: context deadline exceeded\n"}
{"Action":"fail","Test":"T","Elapsed":300}
`
	cases, top, err := parseTest2JSON(strings.NewReader(in), "T")
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) != 0 {
		t.Errorf("cases %v, want none", cases)
	}
	if !strings.Contains(top, "context deadline exceeded") {
		t.Errorf("top failure %q does not say why", top)
	}
}

func TestShorten(t *testing.T) {
	long := strings.Repeat("line\n\n", maxFailureLines+5)
	got := strings.Split(shorten(long), "\n")
	if len(got) != maxFailureLines+1 || got[maxFailureLines] != "…" {
		t.Errorf("shorten kept %d lines: %q", len(got), got)
	}
}

func TestShortCases(t *testing.T) {
	cases := []Case{
		{Name: "[sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]", State: Passed},
		{Name: "[sig-network] Netpol NetworkPolicy between server and client should support allow-all policy [Feature:NetworkPolicy]", State: Skipped},
		{Name: "TestConformanceProfiles/CNPAdminTierIngressTCP", State: Failed},
	}
	kept, missing := shortCases(cases, []string{
		"Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy",
		"CNPAdminTierIngressTCP",
		"CNPBaselineTierEgressUDP",
	})
	if len(kept) != 2 || kept[0].State != Passed || kept[1].State != Failed {
		t.Errorf("kept %+v, want the default-deny-ingress and CNPAdminTierIngressTCP cases", kept)
	}
	if len(missing) != 1 || missing[0] != "CNPBaselineTierEgressUDP" {
		t.Errorf("missing %q, want [CNPBaselineTierEgressUDP]", missing)
	}
}
