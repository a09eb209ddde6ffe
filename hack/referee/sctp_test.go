package main

import (
	"reflect"
	"strings"
	"testing"
)

func TestStripSCTPServers(t *testing.T) {
	tests := []struct {
		name        string
		in, want    string
		wantRemoved []string
	}{
		{
			name: "porter containers go, the others and their env stay",
			in: `spec:
  containers:
    - name: a-client
      image: agnhost
    - name: a-80
      command: ["/bin/bash", "-c", "/agnhost serve-hostname --tcp --port 80"]
      env:
      - name: HOST_IP
        value: x
    - name: a-9003
      command: ["/bin/bash", "-c", "/agnhost porter"]
      env:
      - name: SERVE_SCTP_PORT_9003
        value: "foo"
    - name: a-53
      image: agnhost
---
kind: Namespace
`,
			want: `spec:
  containers:
    - name: a-client
      image: agnhost
    - name: a-80
      command: ["/bin/bash", "-c", "/agnhost serve-hostname --tcp --port 80"]
      env:
      - name: HOST_IP
        value: x
    - name: a-53
      image: agnhost
---
kind: Namespace
`,
			wantRemoved: []string{"a-9003"},
		},
		{
			name: "the last container of a document, templated names",
			in: `      containers:
        - name: c-{{ index .Ports 5 }}
          image: agnhost
        - name: c-{{ index .Ports 6 }}
          env:
          - name: SERVE_SCTP_PORT_{{ index .Ports 6 }}
            value: "foo"
---
`,
			want: `      containers:
        - name: c-{{ index .Ports 5 }}
          image: agnhost
---
`,
			wantRemoved: []string{"c-{{ index .Ports 6 }}"},
		},
		{
			name:        "nothing to strip",
			in:          "containers:\n- name: x\n  image: y\n",
			want:        "containers:\n- name: x\n  image: y\n",
			wantRemoved: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, removed := stripSCTPServers([]byte(tt.in))
			if string(got) != tt.want {
				t.Errorf("got\n%s\nwant\n%s", got, tt.want)
			}
			if !reflect.DeepEqual(removed, tt.wantRemoved) {
				t.Errorf("removed %q, want %q", removed, tt.wantRemoved)
			}
			if strings.Contains(string(got), sctpServerMarker) {
				t.Errorf("SCTP server left in\n%s", got)
			}
		})
	}
}

func TestSkipSCTPProbes(t *testing.T) {
	for _, tt := range []struct{ name, sig, ret string }{
		{"v0.2.0", "func PokeServer(t *testing.T, client k8sclient.Interface, kubeConfig *rest.Config, clientNamespace, clientPod, protocol, targetHost string, targetPort int32, timeoutConfig config.TimeoutConfig, shouldConnect bool) {", "\t\treturn\n"},
		{"v0.1.7", "func PokeServer(t *testing.T, client k8sclient.Interface, kubeConfig *rest.Config, clientNamespace, clientPod, protocol, targetHost string, targetPort int32, timeout time.Duration, shouldConnect bool) bool {", "\t\treturn true\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := "package kubernetes\n\n// PokeServer pokes.\n" + tt.sig + "\n\tt.Helper()\n}\n"
			out, err := skipSCTPProbes([]byte(src))
			if err != nil {
				t.Fatal(err)
			}
			want := tt.sig + "\n\tif protocol == \"sctp\" {\n\t\tt.Logf(\"" + sctpProbeMarker
			if !strings.Contains(string(out), want) || !strings.Contains(string(out), tt.ret+"\t}\n\tt.Helper()\n}\n") {
				t.Errorf("patched source:\n%s", out)
			}
		})
	}
	if _, err := skipSCTPProbes([]byte("package kubernetes\nfunc Poke(t *testing.T) {}\n")); err == nil {
		t.Error("no error for a helper without PokeServer")
	}
	if _, err := skipSCTPProbes([]byte("func PokeServer(t *testing.T, host string) {\n}\n")); err == nil {
		t.Error("no error for a PokeServer with another signature")
	}
}

func TestSCTPProbesNotRunInResults(t *testing.T) {
	log := `{"Action":"run","Test":"TestConformanceProfiles/CNPAdminTierGress"}
{"Action":"output","Test":"TestConformanceProfiles/CNPAdminTierGress/allow","Output":"    helper.go:70: ` + sctpProbeMarker + ` (the kernel has no SCTP sockets): a/b -> 10.0.0.1:9003, shouldConnect=true\n"}
{"Action":"output","Test":"TestConformanceProfiles/CNPAdminTierGress/allow","Output":"    helper.go:70: ` + sctpProbeMarker + ` (the kernel has no SCTP sockets): a/b -> 10.0.0.1:9005, shouldConnect=true\n"}
{"Action":"pass","Test":"TestConformanceProfiles/CNPAdminTierGress/allow"}
{"Action":"pass","Test":"TestConformanceProfiles/CNPAdminTierGress"}
{"Action":"run","Test":"TestConformanceProfiles/CNPAdminTierEgressTCP"}
{"Action":"pass","Test":"TestConformanceProfiles/CNPAdminTierEgressTCP"}
{"Action":"run","Test":"TestConformanceProfiles/CNPAdminTierIngressSCTP"}
{"Action":"output","Test":"TestConformanceProfiles/CNPAdminTierIngressSCTP/deny","Output":"    helper.go:70: ` + sctpProbeMarker + ` (the kernel has no SCTP sockets): a/b -> 10.0.0.1:9003, shouldConnect=false\n"}
{"Action":"output","Test":"TestConformanceProfiles/CNPAdminTierIngressSCTP/deny","Output":"    helper.go:71: Expected connection to be dropped\n"}
{"Action":"fail","Test":"TestConformanceProfiles/CNPAdminTierIngressSCTP"}
`
	cases, _, err := parseTest2JSON(strings.NewReader(log), npapiTop)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]Case{}
	for _, c := range cases {
		got[c.Name] = c
	}
	if c := got["CNPAdminTierGress"]; c.State != NoSCTP || c.Failure != "2 SCTP probes not run" {
		t.Errorf("CNPAdminTierGress: %+v, want passed with 2 SCTP probes not run", c)
	}
	if c := got["CNPAdminTierEgressTCP"]; c.State != Passed {
		t.Errorf("CNPAdminTierEgressTCP: %+v, want passed", c)
	}
	if c := got["CNPAdminTierIngressSCTP"]; c.State != Failed {
		t.Errorf("CNPAdminTierIngressSCTP: %+v, want failed: a failure stays a failure", c)
	}
}
