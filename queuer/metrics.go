package main

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

// procNFQueue is where the kernel reports per-queue NFQUEUE counters.
const procNFQueue = "/proc/net/netfilter/nfnetlink_queue"

// metrics are the queuer's Prometheus metrics. The packet_* and nfqueue_*
// names are those of kube-network-policies, so its dashboards keep working.
type metrics struct {
	registry *prometheus.Registry

	processTime        *prometheus.HistogramVec
	processMicros      *prometheus.HistogramVec
	packets            *prometheus.CounterVec
	failMode           *prometheus.CounterVec
	deciderRTT         prometheus.Histogram
	deciderErrors      prometheus.Counter
	parseErrors        prometheus.Counter
	generation         prometheus.Gauge
	dataplaneMode      *prometheus.GaugeVec
	kernelCacheDropped prometheus.Counter
	kernelCacheStale   prometheus.Counter
	kernelCacheErrors  prometheus.Counter
	invalidations      *prometheus.CounterVec

	state *stateCollector
}

// newMetrics registers every metric. c and counters may be nil (tests);
// procPath is the NFQUEUE proc file.
func newMetrics(c *cache.Cache, counters *nfq.Counters, procPath string) *metrics {
	m := &metrics{
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
		parseErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_packet_parse_errors_total",
			Help: "Queued packets whose headers could not be read (answered by the fail mode).",
		}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tollgate_decider_generation",
			Help: "Last decider state generation applied.",
		}),
		dataplaneMode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tollgate_dataplane_mode",
			Help: "Queueing mode in use (nft: native queue statement, xt: iptables NFQUEUE target); the value is 1.",
		}, []string{"mode"}),
		kernelCacheDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_kernel_cache_dropped_total",
			Help: "Verdicts not added to the kernel cache because the batch queue was full.",
		}),
		kernelCacheStale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_kernel_cache_stale_total",
			Help: "Queued kernel-cache verdicts discarded because the generation changed.",
		}),
		kernelCacheErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tollgate_kernel_cache_errors_total",
			Help: "Failed writes of verdict batches to the kernel cache.",
		}),
		invalidations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tollgate_cache_invalidations_total",
			Help: "Decider generations applied to the verdict caches: precise (only verdicts involving changed addresses dropped) or full.",
		}, []string{"kind"}),
	}
	m.state = &stateCollector{cache: c, counters: counters, procPath: procPath}
	m.registry.MustRegister(m.processTime, m.processMicros, m.packets, m.failMode, m.deciderRTT,
		m.deciderErrors, m.parseErrors, m.generation, m.dataplaneMode,
		m.kernelCacheDropped, m.kernelCacheStale, m.kernelCacheErrors, m.invalidations,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.state)
	return m
}

// countCuts exports the flow cutter's counters.
func (m *metrics) countCuts(stats func() conntrack.Stats) {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	m.state.cut = stats
}

// countBypass makes the metrics report the packets sent to the queues that
// the kernel answered without the queuer. sent reads the dataplane's counter
// of packets sent to NFQUEUE.
func (m *metrics) countBypass(sent func(context.Context) (uint64, error), failOpen bool) {
	m.state.mu.Lock()
	defer m.state.mu.Unlock()
	m.state.sent = sent
	m.state.failOpen = failOpen
}

// observePacket records one answered packet.
func (m *metrics) observePacket(d time.Duration, allow bool, source string) {
	verdict := "drop"
	if allow {
		verdict = "accept"
	}
	m.processTime.WithLabelValues(source, verdict).Observe(d.Seconds())
	m.processMicros.WithLabelValues(source, verdict).Observe(float64(d.Nanoseconds()) / 1e3)
	m.packets.WithLabelValues(source, verdict).Inc()
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
	descQueueSent      = prometheus.NewDesc("tollgate_queue_sent_total",
		"Packets the nftables table sent to NFQUEUE since the queuer set it up.", nil, nil)
	descQueueBypassed = prometheus.NewDesc("tollgate_queue_bypassed_total",
		"Packets sent to NFQUEUE that the kernel answered without the queuer and without counting them "+
			"in nfqueue_queue_dropped or nfqueue_user_dropped: let through (verdict=accept, fail-open) "+
			"when the queue or the netlink socket was full or nobody was listening, or dropped "+
			"(verdict=drop, fail-closed) while nobody was listening. Derived: sent minus read minus "+
			"kernel drops minus packets waiting; it can lag by the packets in flight, never lead.",
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
	bypassed uint64                 // highest value reported, so the counter never goes back
	cut      func() conntrack.Stats // nil: flow cutting is off
}

// Describe implements prometheus.Collector.
func (s *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCacheHits, descCacheMisses, descCacheEvictions, descCacheExpired,
		descCacheEntries, descQueuePackets, descQueueReadErrs, descQueueVerdErrs,
		descNFQTotal, descNFQDropped, descNFQUserDropped, descNFQPacketID, descQueueSent, descQueueBypassed,
		descCutRuns, descCutExamined, descCutSkipped, descCutCut, descCutErrors} {
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
			return nil, fmt.Errorf("%s: line %q has %d fields, want at least 8", procNFQueue, sc.Text(), len(fields))
		}
		var v [8]uint64
		for i := range v {
			n, err := strconv.ParseUint(fields[i], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s: line %q: %w", procNFQueue, sc.Text(), err)
			}
			v[i] = n
		}
		out = append(out, procQueue{queue: v[0], total: v[2], dropped: v[5], userDropped: v[6], packetID: v[7]})
	}
	if err := sc.Err(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", procNFQueue, err)
	}
	return out, nil
}
