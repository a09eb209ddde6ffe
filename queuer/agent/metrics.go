package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tollgate/tollgate/queuer/cache"
	"github.com/tollgate/tollgate/queuer/conntrack"
	"github.com/tollgate/tollgate/queuer/nfq"
)

// ProcNFQueue is where the kernel reports per-queue NFQUEUE counters.
const ProcNFQueue = "/proc/net/netfilter/nfnetlink_queue"

// Metrics are the queuer's Prometheus metrics. The packet_* and nfqueue_*
// names are those of kube-network-policies, so its dashboards keep working.
type Metrics struct {
	registry *prometheus.Registry

	processTime   *prometheus.HistogramVec
	processMicros *prometheus.HistogramVec
	packets       *prometheus.CounterVec
	// bySource holds the series of processTime, processMicros and packets
	// of each packet source, by verdict (drop, accept), looked up once.
	bySource       map[string]*[2]packetSeries
	failMode       *prometheus.CounterVec
	deciderRTT     prometheus.Histogram
	deciderErrors  prometheus.Counter
	busy           prometheus.Counter
	unjudgeable    *prometheus.CounterVec
	generation     prometheus.Gauge
	dataplaneMode  *prometheus.GaugeVec
	learnedStale   prometheus.Counter
	invalidations  *prometheus.CounterVec
	applyErrors    prometheus.Counter
	applyLatency   prometheus.Histogram
	repairs        prometheus.Counter
	checkErrors    prometheus.Counter
	cutsLifted     prometheus.Counter
	cutsNotGuarded prometheus.Counter
	dnsAnswers     *prometheus.CounterVec

	state *stateCollector
}

// NewMetrics registers every metric. c and counters may be nil (tests);
// procPath is the NFQUEUE proc file (ProcNFQueue).
func NewMetrics(c *cache.Cache, counters *nfq.Counters, procPath string) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		processTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "packet_process_time",
			Help:    "Time to reach a verdict for a queued packet, in seconds.",
			Buckets: prometheus.ExponentialBuckets(1e-6, 4, 11), // 1µs .. ~1s
		}, []string{"source", "verdict"}),
		processMicros: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "packet_process_duration_microseconds",
			Help:    "Time to reach a verdict for a queued packet, in microseconds.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 11),
		}, []string{"source", "verdict"}),
		packets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "packet_count",
			Help: "Queued packets answered, by how the verdict was reached and the verdict.",
		}, []string{"source", "verdict"}),
		failMode: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_fail_mode_verdicts_total",
			Help: "Packets answered by the fail mode (open: accepted, closed: dropped) because no verdict could be had.",
		}, []string{"mode"}),
		deciderRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tollgate_decider_rtt_seconds",
			Help:    "Round-trip time of successful decider queries.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 2, 16), // 10µs .. ~330ms
		}),
		deciderErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_decider_errors_total",
			Help: "Decider queries that failed (unavailable, broken stream, timeout, rejected).",
		}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_decider_busy_total",
			Help: "Packets dropped because the connected decider did not answer within --decide-timeout (in both fail modes).",
		}),
		unjudgeable: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_packets_unjudgeable_total",
			Help: "Queued packets dropped, in both fail modes, because their headers could not be read, by reason (truncated, extension-headers, version, malformed, fragment).",
		}, []string{"reason"}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tollgate_decider_generation",
			Help: "Last decider state generation applied.",
		}),
		dataplaneMode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tollgate_dataplane_mode",
			Help: "Queueing mode in use (nft: native queue statement, xt: iptables NFQUEUE target); the value is 1.",
		}, []string{"mode"}),
		learnedStale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_kernel_cache_learned_stale_total",
			Help: "Verdicts the kernel learned while a new generation came into force, removed again.",
		}),
		invalidations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_cache_invalidations_total",
			Help: "Decider generations applied to the verdict caches: precise (only verdicts involving changed addresses dropped) or full.",
		}, []string{"kind"}),
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_watch_apply_errors_total",
			Help: "Decider announcements that could not be put in force (both cache tiers were reset; retried every second).",
		}),
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tollgate_generation_apply_seconds",
			Help:    "Time from a decider generation announced to the dataplane and caches updated for it.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2, 16), // 100µs .. ~3s
		}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_ruleset_repairs_total",
			Help: "Times the ruleset was found missing or changed and restored.",
		}),
		checkErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_ruleset_check_errors_total",
			Help: "Ruleset checks that could not be made (nft or iptables failed).",
		}),
		cutsLifted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_conntrack_cuts_lifted_total",
			Help: "Cut flows released from the cut sets because policy allows them again.",
		}),
		dnsAnswers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_dns_answers_total",
			Help: "DNS answers to pods that domainNames rules govern, by what became of them: learned (in force before the answer went on), no-address, unparsable, tcp-lost, learn-failed or apply-timeout (let through unlearned).",
		}, []string{"result"}),
		cutsNotGuarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_conntrack_cuts_unguarded_total",
			Help: "Flows cut without a cut-set entry (sets or memory full, or the write failed): their other end may reopen them.",
		}),
	}
	m.state = &stateCollector{cache: c, counters: counters, procPath: procPath}
	m.registry.MustRegister(m.Collectors()...)
	m.bySource = map[string]*[2]packetSeries{}
	for _, src := range []string{sourceCache, sourceDecider, sourceFailMode, sourceBusy, sourceUnjudgeable, sourceBypass} {
		m.bySource[src] = &[2]packetSeries{m.packetSeries(src, "drop"), m.packetSeries(src, "accept")}
	}
	return m
}

// Collectors lists what the registry holds (dashboards' tests read the
// metric names from it).
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.processTime, m.processMicros, m.packets, m.failMode, m.deciderRTT,
		m.deciderErrors, m.busy, m.unjudgeable, m.generation, m.dataplaneMode, m.learnedStale, m.invalidations,
		m.applyErrors, m.applyLatency, m.repairs, m.checkErrors, m.cutsLifted, m.cutsNotGuarded, m.dnsAnswers,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.state}
}

// Registry is the registry that holds every metric.
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// SetMode records the dataplane's queueing mode.
func (m *Metrics) SetMode(mode string) { m.dataplaneMode.WithLabelValues(mode).Set(1) }

// CutStats are the flow cutter's counters and how many cuts it holds.
type CutStats struct {
	conntrack.Stats
	Active int
}

// countCuts exports the flow cutter's counters.
func (m *Metrics) countCuts(stats func() CutStats) {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	m.state.cut = stats
}

// CountBypass makes the metrics report the packets sent to the queues that
// the kernel answered without the queuer. sent reads the dataplane's counter
// of packets sent to NFQUEUE.
func (m *Metrics) CountBypass(sent func(context.Context) (uint64, error), failOpen bool) {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	m.state.sent = sent
	m.state.failOpen = failOpen
}

// observePacket records one answered packet.
func (m *Metrics) observePacket(d time.Duration, allow bool, source string) {
	var ps packetSeries
	if all, ok := m.bySource[source]; ok {
		ps = all[0]
		if allow {
			ps = all[1]
		}
	} else if allow {
		ps = m.packetSeries(source, "accept")
	} else {
		ps = m.packetSeries(source, "drop")
	}
	ps.time.Observe(d.Seconds())
	ps.micros.Observe(float64(d.Nanoseconds()) / 1e3)
	ps.count.Inc()
}

// packetSeries are the per-packet series of one source and verdict.
type packetSeries struct {
	time, micros prometheus.Observer
	count        prometheus.Counter
}

func (m *Metrics) packetSeries(source, verdict string) packetSeries {
	return packetSeries{m.processTime.WithLabelValues(source, verdict), m.processMicros.WithLabelValues(source, verdict),
		m.packets.WithLabelValues(source, verdict)}
}

var (
	descCacheHits      = prometheus.NewDesc("tollgate_cache_hits_total", "Userspace verdict-cache hits.", nil, nil)
	descCacheMisses    = prometheus.NewDesc("tollgate_cache_misses_total", "Userspace verdict-cache misses.", nil, nil)
	descCacheEvictions = prometheus.NewDesc("tollgate_cache_evictions_total", "Userspace verdict-cache entries evicted for room.", nil, nil)
	descCacheExpired   = prometheus.NewDesc("tollgate_cache_expired_total", "Userspace verdict-cache entries dropped by TTL or generation.", nil, nil)
	descCacheEntries   = prometheus.NewDesc("tollgate_cache_entries", "Userspace verdict-cache entries stored.", nil, nil)
	descQueuePackets   = prometheus.NewDesc("tollgate_nfqueue_packets_total", "Packets read from each queue.", []string{"queue"}, nil)
	descQueueReadErrs  = prometheus.NewDesc("tollgate_nfqueue_read_errors_total", "Netlink receive errors survived per queue (mostly ENOBUFS).", []string{"queue"}, nil)
	descQueueVerdErrs  = prometheus.NewDesc("tollgate_nfqueue_verdict_errors_total", "Verdicts the kernel did not take, per queue.", []string{"queue"}, nil)
	descNFQTotal       = prometheus.NewDesc("nfqueue_queue_total", "Packets waiting in the kernel queue for a verdict.", []string{"queue"}, nil)
	descNFQDropped     = prometheus.NewDesc("nfqueue_queue_dropped", "Packets the kernel dropped because the queue was full.", []string{"queue"}, nil)
	descNFQUserDropped = prometheus.NewDesc("nfqueue_user_dropped", "Packets the kernel dropped because the netlink socket buffer was full.", []string{"queue"}, nil)
	descNFQPacketID    = prometheus.NewDesc("nfqueue_packet_id", "Id of the last packet queued.", []string{"queue"}, nil)
	descCutRuns        = prometheus.NewDesc("tollgate_conntrack_cut_runs_total", "Re-evaluations of established flows after a policy change.", nil, nil)
	descCutExamined    = prometheus.NewDesc("tollgate_conntrack_flows_examined_total", "Established flows re-decided after a policy change.", nil, nil)
	descCutSkipped     = prometheus.NewDesc("tollgate_conntrack_flows_skipped_total", "Established flows of selected pods not re-decided because neither end's verdict inputs changed.", nil, nil)
	descCutCut         = prometheus.NewDesc("tollgate_conntrack_flows_cut_total", "Established flows cut (conntrack entry deleted) because policy now denies them.", nil, nil)
	descCutErrors      = prometheus.NewDesc("tollgate_conntrack_cut_errors_total", "Established flows that could not be re-decided (op=decide) or deleted (op=delete).", []string{"op"}, nil)
	descCutAdopted     = prometheus.NewDesc("tollgate_conntrack_flows_adopted_total", "Allowed flows of newly selected pods given the dataplane's conntrack mark.", nil, nil)
	descCutsActive     = prometheus.NewDesc("tollgate_conntrack_cuts_active", "Cut flows held in the cut sets.", nil, nil)
	descQueueSent      = prometheus.NewDesc("tollgate_queue_sent_total",
		"Packets the nftables table sent to NFQUEUE since the queuer set it up.", nil, nil)
	descQueueBypassed = prometheus.NewDesc("tollgate_queue_bypassed_total",
		"Packets sent to NFQUEUE that the kernel answered without the queuer and without counting them "+
			"in nfqueue_queue_dropped or nfqueue_user_dropped, that is while nobody read the queue: let "+
			"through by the queue's bypass flag (verdict=accept, fail-open) or dropped (verdict=drop, "+
			"fail-closed). A full queue drops in both modes and counts in nfqueue_queue_dropped. Derived: "+
			"sent minus read minus kernel drops minus packets waiting; it can lag by the packets in flight, never lead.",
		[]string{"verdict"}, nil)
)

// stateCollector reads counters kept elsewhere at scrape time: the cache's,
// the queue readers', and the kernel's in /proc.
type stateCollector struct {
	cache    *cache.Cache
	counters *nfq.Counters
	procPath string

	mu       sync.Mutex
	sent     func(context.Context) (uint64, error) // nil: bypasses not counted
	failOpen bool
	bypassed uint64          // highest value reported, so the counter never goes back
	cut      func() CutStats // nil: flow cutting is off
}

// Describe implements prometheus.Collector.
func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCacheHits, descCacheMisses, descCacheEvictions, descCacheExpired,
		descCacheEntries, descQueuePackets, descQueueReadErrs, descQueueVerdErrs,
		descNFQTotal, descNFQDropped, descNFQUserDropped, descNFQPacketID, descQueueSent, descQueueBypassed,
		descCutRuns, descCutExamined, descCutSkipped, descCutCut, descCutErrors, descCutAdopted, descCutsActive} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (s *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Read the packets sent before what was done with them, so that packets
	// in flight make the bypass count lag rather than lead.
	var sent uint64
	var sentErr error
	if s.sent != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		sent, sentErr = s.sent(ctx)
		cancel()
	}
	if s.cut != nil {
		st := s.cut()
		ch <- prometheus.MustNewConstMetric(descCutRuns, prometheus.CounterValue, float64(st.Runs))
		ch <- prometheus.MustNewConstMetric(descCutExamined, prometheus.CounterValue, float64(st.Examined))
		ch <- prometheus.MustNewConstMetric(descCutSkipped, prometheus.CounterValue, float64(st.Skipped))
		ch <- prometheus.MustNewConstMetric(descCutCut, prometheus.CounterValue, float64(st.Cut))
		ch <- prometheus.MustNewConstMetric(descCutErrors, prometheus.CounterValue, float64(st.DecideErrors), "decide")
		ch <- prometheus.MustNewConstMetric(descCutErrors, prometheus.CounterValue, float64(st.DeleteErrors), "delete")
		ch <- prometheus.MustNewConstMetric(descCutAdopted, prometheus.CounterValue, float64(st.Adopted))
		ch <- prometheus.MustNewConstMetric(descCutsActive, prometheus.GaugeValue, float64(st.Active))
	}
	var read uint64
	if s.cache != nil {
		st := s.cache.Stats()
		ch <- prometheus.MustNewConstMetric(descCacheHits, prometheus.CounterValue, float64(st.Hits))
		ch <- prometheus.MustNewConstMetric(descCacheMisses, prometheus.CounterValue, float64(st.Misses))
		ch <- prometheus.MustNewConstMetric(descCacheEvictions, prometheus.CounterValue, float64(st.Evictions))
		ch <- prometheus.MustNewConstMetric(descCacheExpired, prometheus.CounterValue, float64(st.Expired))
		ch <- prometheus.MustNewConstMetric(descCacheEntries, prometheus.GaugeValue, float64(s.cache.Len()))
	}
	if s.counters != nil {
		for _, q := range s.counters.Snapshot() {
			read += q.Packets
			label := strconv.Itoa(int(q.Queue))
			ch <- prometheus.MustNewConstMetric(descQueuePackets, prometheus.CounterValue, float64(q.Packets), label)
			ch <- prometheus.MustNewConstMetric(descQueueReadErrs, prometheus.CounterValue, float64(q.ReadErrors), label)
			ch <- prometheus.MustNewConstMetric(descQueueVerdErrs, prometheus.CounterValue, float64(q.VerdictErrors), label)
		}
	}
	queues, err := readProcNFQueue(s.procPath)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(descNFQTotal, err)
		return
	}
	if s.sent != nil {
		s.collectBypass(ch, sent, sentErr, read, queues)
	}
	for _, q := range queues {
		label := strconv.FormatUint(uint64(q.queue), 10)
		ch <- prometheus.MustNewConstMetric(descNFQTotal, prometheus.GaugeValue, float64(q.total), label)
		ch <- prometheus.MustNewConstMetric(descNFQDropped, prometheus.GaugeValue, float64(q.dropped), label)
		ch <- prometheus.MustNewConstMetric(descNFQUserDropped, prometheus.GaugeValue, float64(q.userDropped), label)
		ch <- prometheus.MustNewConstMetric(descNFQPacketID, prometheus.GaugeValue, float64(q.packetID), label)
	}
}

// collectBypass reports the packets sent to the queues and those the kernel
// answered on its own without counting them: sent - read - dropped -
// user-dropped - waiting. Only the queuer's own queues count.
func (s *stateCollector) collectBypass(ch chan<- prometheus.Metric, sent uint64, sentErr error, read uint64, queues []procQueue) {
	if sentErr != nil {
		ch <- prometheus.NewInvalidMetric(descQueueSent, sentErr)
		return
	}
	ch <- prometheus.MustNewConstMetric(descQueueSent, prometheus.CounterValue, float64(sent))
	accounted := read
	for _, q := range queues {
		if s.counters != nil && !s.counters.Has(uint16(q.queue)) {
			continue
		}
		accounted += q.dropped + q.userDropped + q.total
	}
	if sent > accounted && sent-accounted > s.bypassed {
		s.bypassed = sent - accounted
	}
	verdict := "drop"
	if s.failOpen {
		verdict = "accept"
	}
	ch <- prometheus.MustNewConstMetric(descQueueBypassed, prometheus.CounterValue, float64(s.bypassed), verdict)
}

// readProcNFQueue reads the NFQUEUE proc file; a missing file (no queue
// bound yet, or no module) reads as no queues.
func readProcNFQueue(path string) ([]procQueue, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseProcNFQueue(f)
}

// procQueue is one line of /proc/net/netfilter/nfnetlink_queue.
type procQueue struct {
	queue, total, dropped, userDropped, packetID uint64
}

// parseProcNFQueue reads the kernel's NFQUEUE table. Each line holds: queue
// number, peer port id, packets waiting, copy mode, copy range, packets
// dropped (queue full), packets dropped by netlink (user), last packet id,
// and a constant 1.
func parseProcNFQueue(r io.Reader) ([]procQueue, error) {
	var out []procQueue
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) < 8 {
			return nil, fmt.Errorf("%s: line %q has %d fields, want at least 8", ProcNFQueue, sc.Text(), len(fields))
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(fields[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s: line %q: %w", ProcNFQueue, sc.Text(), err)
			}
			v[i] = n
		}
		out = append(out, procQueue{queue: v[0], total: v[2], dropped: v[5], userDropped: v[6], packetID: v[7]})
	}
	if err := sc.Err(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", ProcNFQueue, err)
	}
	return out, nil
}
