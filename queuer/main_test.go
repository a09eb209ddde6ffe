package main

import (
	"context"
	"errors"
	"flag"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/tollgate/tollgate/queuer/agent"
)

func TestHealthAndReadiness(t *testing.T) {
	m := agent.NewMetrics(nil, nil, "/nonexistent")
	var ready bool
	mux := newMux(m, func(context.Context) bool { return ready })
	get := func(path string) int {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code
	}
	if get("/healthz") != 200 || get("/readyz") != 503 {
		t.Error("before ready: want healthz 200, readyz 503")
	}
	ready = true
	if get("/readyz") != 200 || get("/metrics") != 200 {
		t.Error("after ready: want readyz and metrics 200")
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--node-name", "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if !o.failOpen || o.firstQueue != 100 || o.metricsAddr != ":9080" || o.queueMode != "auto" ||
		o.deciderSocket != "/run/tollgate/decider.sock" || o.queueMaxLen != 1024 || o.queues < 1 {
		t.Errorf("defaults = %+v", o)
	}
	for _, bad := range [][]string{
		{"--queues", "0"},
		{"--nfqueue-id", "65535", "--queues", "2"},
		{"--decide-timeout", "0s"},
		{"--cache-size", "0"},
		{"--kernel-cache-size", "0"},
		{"--check-interval", "-1s"},
		{"--cpus", "1-0"},
		{"--cpus", "x"},
		{"extra"},
	} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%v) accepted", bad)
		}
	}
	// --cpus gives a queue to each of its CPUs, unless --queues says.
	if o, err := parseFlags([]string{"--cpus", "0-2"}); err != nil || o.queues != 3 || o.cpus.String() != "0-2" {
		t.Errorf("--cpus 0-2: queues %d, cpus %s, err %v; want 3 queues on 0-2", o.queues, o.cpus, err)
	}
	if o, err := parseFlags([]string{"--cpus", "1", "--queues", "4"}); err != nil || o.queues != 4 {
		t.Errorf("--cpus 1 --queues 4: queues %d, err %v; want 4", o.queues, err)
	}
	if _, err := parseFlags([]string{"--help"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
}
