package main

import (
	"testing"

	"github.com/tollgate/tollgate/queuer/decisionlog"
)

func TestLogDecisionsFlags(t *testing.T) {
	o, err := parseFlags([]string{"--node-name", "n1"})
	if err != nil || o.logDecisions != decisionlog.ModeDeny || o.logRate != decisionlog.DefaultRate {
		t.Errorf("defaults: %v %v %v", o.logDecisions, o.logRate, err)
	}
	if o, err := parseFlags([]string{"--node-name", "n1", "--log-decisions=all", "--log-decisions-rate", "5"}); err != nil ||
		o.logDecisions != decisionlog.ModeAll || o.logRate != 5 {
		t.Errorf("all: %v %v %v", o.logDecisions, o.logRate, err)
	}
	for _, bad := range [][]string{{"--log-decisions", "some"}, {"--log-decisions-rate", "0"}} {
		if _, err := parseFlags(append([]string{"--node-name", "n1"}, bad...)); err == nil {
			t.Errorf("parseFlags(%v) accepted", bad)
		}
	}
}
