// Package grafana holds Tollgate's Grafana dashboard (tollgate.json). Its
// test checks that every metric the dashboard queries is one the decider
// or the queuer exports.
package grafana

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tollgate/tollgate/decider/api"
	"github.com/tollgate/tollgate/queuer/agent"
)

// metric kinds: a histogram is queried through its _bucket, _sum and
// _count series.
type kind int

const (
	plain kind = iota
	histogram
)

// recorder is a prometheus.Registerer that keeps what is registered.
type recorder struct{ collectors []prometheus.Collector }

func (r *recorder) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return nil
}
func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	r.collectors = append(r.collectors, cs...)
}
func (r *recorder) Unregister(prometheus.Collector) bool { return false }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// described adds the names the collectors describe.
func described(names map[string]kind, cs ...prometheus.Collector) {
	for _, c := range cs {
		k := plain
		switch c.(type) {
		case prometheus.Histogram, *prometheus.HistogramVec:
			k = histogram
		}
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			if m := fqName.FindStringSubmatch(d.String()); m != nil {
				names[m[1]] = k
			}
		}
	}
}

// deciderMetrics builds the decider's metrics as its main does.
func deciderMetrics() map[string]kind {
	names := map[string]kind{}
	var r recorder
	api.NewMetrics(&r, 0)
	described(names, r.collectors...)
	described(names, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return names
}

// queuerMetrics lists the names the queuer registers, from its real
// registry.
func queuerMetrics(t *testing.T) map[string]kind {
	t.Helper()
	names := map[string]kind{}
	described(names, agent.NewMetrics(nil, nil, "/nonexistent").Collectors()...)
	return names
}

// exprs collects every "expr" of the dashboard's panels and their targets.
func exprs(v any, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "expr" {
				*out = append(*out, s)
			}
			exprs(x, out)
		}
	case []any:
		for _, x := range v {
			exprs(x, out)
		}
	}
}

var (
	quoted    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	matchers  = regexp.MustCompile(`\{[^}]*\}`)
	ranges    = regexp.MustCompile(`\[[^\]]*\]`)
	grouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	ident     = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	operators = []string{"and", "or", "unless", "bool", "offset", "by", "without"}
)

// metricNames lists the metric names a PromQL expression reads: the
// identifiers left once strings, label matchers, ranges and grouping
// clauses are removed, that are not function calls or operators.
func metricNames(expr string) []string {
	e := quoted.ReplaceAllString(expr, `""`)
	e = matchers.ReplaceAllString(e, " ")
	e = ranges.ReplaceAllString(e, " ")
	e = grouping.ReplaceAllString(e, " ")
	var out []string
	for _, loc := range ident.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		rest := strings.TrimLeft(e[loc[1]:], " ")
		if strings.HasPrefix(rest, "(") || slices.Contains(operators, name) {
			continue
		}
		out = append(out, name)
	}
	return out
}

func TestMetricNames(t *testing.T) {
	got := metricNames(`histogram_quantile(0.99, sum by (le, source) (rate(packet_process_time_bucket{a="b{c}"}[5m]))) / on (x) foo_total > 0`)
	if want := []string{"packet_process_time_bucket", "foo_total"}; !slices.Equal(got, want) {
		t.Errorf("metricNames = %v, want %v", got, want)
	}
}

// TestDashboardMetricsExist: every metric the dashboard queries is
// exported by the decider or the queuer, with the series suffixes of its
// kind.
func TestDashboardMetricsExist(t *testing.T) {
	data, err := os.ReadFile("tollgate.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("tollgate.json: %v", err)
	}
	known := deciderMetrics()
	for name, k := range queuerMetrics(t) {
		known[name] = k
	}
	// The readers must see both components, or everything would fail for
	// the wrong reason.
	for _, name := range []string{"tollgate_decider_verdicts_total", "tollgate_decider_snapshot_build_seconds", "packet_count", "tollgate_cache_hits_total", "process_resident_memory_bytes"} {
		if _, ok := known[name]; !ok {
			t.Fatalf("%s not found among the exported metrics; the readers are broken", name)
		}
	}
	var all []string
	exprs(dash, &all)
	queried := map[string]bool{}
	for _, e := range all {
		for _, name := range metricNames(e) {
			queried[name] = true
			if _, ok := known[name]; ok {
				continue
			}
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				base = strings.TrimSuffix(base, suffix)
			}
			if k, ok := known[base]; ok && base != name && k == histogram {
				continue
			}
			t.Errorf("the dashboard queries %s (in %q), which neither the decider nor the queuer exports", name, e)
		}
	}
	if len(queried) < 20 {
		t.Errorf("only %d metrics queried: %v", len(queried), queried)
	}
}

// TestDashboardShape: panels have unique ids and read the datasource
// variable, so the dashboard imports into any Grafana.
func TestDashboardShape(t *testing.T) {
	data, err := os.ReadFile("tollgate.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	ids := map[int]bool{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
			t.Errorf("panel %q: datasource %q, %d targets", p.Title, p.Datasource.UID, len(p.Targets))
		}
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		t.Errorf("uid %q, %d panels", dash.UID, len(dash.Panels))
	}
}
