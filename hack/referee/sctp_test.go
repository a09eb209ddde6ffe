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
