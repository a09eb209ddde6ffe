// Package dataplane owns the kernel side of the queuer: the nftables table
// `inet tollgate` that steers the first packet of new connections of
// policy-selected pods to NFQUEUE, the sets of selected pod IPs, and the kernel
// tier of the verdict cache.
//
// Two queueing modes exist. ModeNFT uses the native nft `queue` statement.
// ModeXT is for kernels built without CONFIG_NFT_QUEUE: the nft table marks
// the packet and one iptables rule per family (xt NFQUEUE target) queues
// marked packets. docs/dataplane.md explains the ruleset and the fail modes.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"sigs.k8s.io/knftables"
)

// Mode is how packets reach NFQUEUE.
type Mode string

const (
	// ModeNFT queues with the native nftables `queue` statement.
	ModeNFT Mode = "nft"
	// ModeXT marks packets in nftables and queues them with the xt NFQUEUE
	// target of iptables (for kernels without CONFIG_NFT_QUEUE).
	ModeXT Mode = "xt"
)

// TableName is the name of the nftables table (family inet) that Tollgate owns.
const TableName = "tollgate"

// DefaultVerdictTTL is the lifetime of kernel verdict-cache entries when
// Config.VerdictTTL is zero.
const DefaultVerdictTTL = time.Minute

// DefaultVerdictCacheSize and DefaultCutSetSize bound each verdict set
// and each cut set when the Config leaves them zero.
const (
	DefaultVerdictCacheSize = 65536
	DefaultCutSetSize       = 65536
)

// Config configures the dataplane.
type Config struct {
	// QueueMode is "auto" (or empty), "nft" or "xt". Auto probes the kernel for
	// the native queue statement and falls back to xt.
	QueueMode string
	// FirstQueue is the first NFQUEUE number.
	FirstQueue uint16
	// QueueCount is how many consecutive queues, starting at FirstQueue, the
	// kernel fans packets out to (by CPU). Must be at least 1.
	QueueCount uint16
	// FailOpen makes packets pass when no program listens on the queue (queue
	// bypass). Without it, packets of selected pods that no cached verdict
	// answers are dropped while the queuer is away. Either way the ruleset
	// and its caches stay in place across a restart.
	FailOpen bool
	// VerdictTTL is the timeout of kernel verdict-cache entries, in whole
	// seconds (at least one second). Zero means DefaultVerdictTTL.
	VerdictTTL time.Duration
	// VerdictCacheSize bounds each of the four verdict sets. When a set is
	// full the kernel learns no more verdicts into it until entries expire:
	// those connections are answered by the queuer instead. Zero means
	// DefaultVerdictCacheSize.
	VerdictCacheSize int
	// CutSetSize bounds each of the two cut sets (zero:
	// DefaultCutSetSize). A cut that does not fit is still cut (its
	// conntrack entry deleted), without the guard against reopening.
	CutSetSize int
	// DNSQueue is the queue that DNS answers to the pods whose answers are
	// learned go to; zero means the one after the verdict queues
	// (FirstQueue + QueueCount).
	DNSQueue uint16
	// ElementsByNetlink writes set elements (the verdicts a change
	// invalidates, the selected and DNS pod sets) over an nf_tables
	// netlink socket, where every change would otherwise start an nft
	// process. nft still writes the ruleset, and takes the element writes
	// back for good if a netlink write fails. Only New honours it.
	ElementsByNetlink bool
	// NetlinkNetNS is the network namespace file (such as
	// /var/run/netns/x) those sockets are opened in; empty: the process's
	// own, where nft runs too.
	NetlinkNetNS string
}

// Verdict is one decided connection tuple for the kernel verdict cache.
// Policy never depends on the source port, so it is not part of the key.
type Verdict struct {
	// Src and Dst are the connection's addresses; both of one family.
	Src, Dst netip.Addr
	// Proto is the IP protocol number. Only TCP, UDP and SCTP are cached.
	Proto uint8
	// DstPort is the destination port.
	DstPort uint16
	// Allow says whether the connection is allowed (else denied).
	Allow bool
}

// Dataplane programs the table `inet tollgate` and, in ModeXT, the iptables
// rules that queue marked packets. It is safe for concurrent use.
type Dataplane struct {
	cfg       Config
	mode      Mode
	nft       knftables.Interface
	ipt       IPTables // nil when no iptables binaries exist (ModeNFT only)
	inspector inspector
	want      *tableShape // what Setup installs

	mu sync.Mutex
	// selected and dnsPods mirror the selected-pod and DNS-pod sets.
	selected, dnsPods addrSets
	setUp             bool
	// queuedBase is the queued counter's value when Setup ran.
	queuedBase uint64
	// verdicts mirrors the elements of the verdict sets, so that
	// InvalidateVerdicts can remove only those a change affects.
	verdicts *mirror
	// now is the clock (time.Now; tests set their own).
	now func() time.Time
	// elems writes set elements over netlink; nil: through nft.
	elems *elementWriter
	// stale is what SweepStale has to delete.
	stale staleState
}

// New creates a Dataplane for the running kernel: nftables through the `nft`
// binary and, when present, iptables through iptables-nft (or
// iptables-legacy). With QueueMode "auto" it probes the kernel for the native
// queue statement and logs the mode it picked.
func New(cfg Config) (*Dataplane, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	nft, err := knftables.New(knftables.InetFamily, TableName)
	if err != nil {
		return nil, fmt.Errorf("dataplane: nftables unavailable: %w", err)
	}
	// ipt stays a nil interface (not a typed nil) when iptables is missing.
	var ipt IPTables
	execIPT, iptErr := NewExecIPTables()
	if iptErr == nil {
		ipt = execIPT
	}
	mode, detected, err := chooseMode(context.Background(), cfg, nft)
	if err != nil {
		return nil, err
	}
	if mode == ModeXT && ipt == nil {
		return nil, fmt.Errorf("dataplane: queue mode xt needs iptables: %w", iptErr)
	}
	slog.Info("dataplane queue mode", "mode", string(mode), "detected", detected,
		"firstQueue", cfg.FirstQueue, "queues", cfg.QueueCount, "failOpen", cfg.FailOpen)
	d, err := newDataplane(cfg, mode, nft, ipt, execInspector{})
	if err != nil {
		return nil, err
	}
	if cfg.ElementsByNetlink {
		d.elems = newElementWriter(cfg.NetlinkNetNS)
	}
	return d, nil
}

// NewWithBackends creates a Dataplane on the given backends, typically
// knftables.NewFake and a FakeIPTables in tests. mode must be ModeNFT or
// ModeXT; ipt may be nil in ModeNFT.
func NewWithBackends(cfg Config, mode Mode, nft knftables.Interface, ipt IPTables) (*Dataplane, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	switch mode {
	case ModeNFT:
	case ModeXT:
		if ipt == nil {
			return nil, errors.New("dataplane: queue mode xt needs an iptables backend")
		}
	default:
		return nil, fmt.Errorf("dataplane: unknown queue mode %q", mode)
	}
	var in inspector = execInspector{}
	if fake, ok := nft.(*knftables.Fake); ok {
		in = fakeInspector{fake}
	}
	return newDataplane(cfg, mode, nft, ipt, in)
}

func newDataplane(cfg Config, mode Mode, nft knftables.Interface, ipt IPTables, in inspector) (*Dataplane, error) {
	want, err := desiredShape(cfg, mode)
	if err != nil {
		return nil, err
	}
	d := &Dataplane{cfg: cfg, mode: mode, nft: nft, ipt: ipt, inspector: in, want: want,
		selected: addrSets{v4: setSelected4, v6: setSelected6, what: "selected pods"},
		dnsPods:  addrSets{v4: setDNS4, v6: setDNS6, what: "DNS pods"},
		stale:    staleState{addrs: map[netip.Addr]struct{}{}},
		now:      time.Now}
	d.verdicts = newMirror(cfg.VerdictCacheSize, cfg.VerdictTTL, func() time.Time { return d.now() })
	return d, nil
}

// withDefaults validates cfg and fills in defaults.
func (cfg Config) withDefaults() (Config, error) {
	switch cfg.QueueMode {
	case "":
		cfg.QueueMode = "auto"
	case "auto", string(ModeNFT), string(ModeXT):
	default:
		return cfg, fmt.Errorf("dataplane: queue mode %q is not auto, nft or xt", cfg.QueueMode)
	}
	if cfg.QueueCount == 0 {
		return cfg, errors.New("dataplane: queue count must be at least 1")
	}
	if int(cfg.FirstQueue)+int(cfg.QueueCount)-1 > 65535 {
		return cfg, fmt.Errorf("dataplane: queues %d..%d exceed 65535",
			cfg.FirstQueue, int(cfg.FirstQueue)+int(cfg.QueueCount)-1)
	}
	if cfg.VerdictTTL == 0 {
		cfg.VerdictTTL = DefaultVerdictTTL
	}
	if cfg.VerdictTTL < time.Second {
		return cfg, fmt.Errorf("dataplane: verdict TTL %s is below one second", cfg.VerdictTTL)
	}
	cfg.VerdictTTL = cfg.VerdictTTL.Truncate(time.Second)
	if cfg.VerdictCacheSize == 0 {
		cfg.VerdictCacheSize = DefaultVerdictCacheSize
	}
	if cfg.CutSetSize == 0 {
		cfg.CutSetSize = DefaultCutSetSize
	}
	if cfg.DNSQueue == 0 {
		if int(cfg.FirstQueue)+int(cfg.QueueCount) > 65535 {
			return cfg, errors.New("dataplane: no queue number left for DNS answers after the verdict queues")
		}
		cfg.DNSQueue = cfg.FirstQueue + cfg.QueueCount
	}
	if cfg.DNSQueue >= cfg.FirstQueue && int(cfg.DNSQueue) < int(cfg.FirstQueue)+int(cfg.QueueCount) {
		return cfg, fmt.Errorf("dataplane: DNS queue %d is one of the verdict queues", cfg.DNSQueue)
	}
	if cfg.VerdictCacheSize < 1 || cfg.CutSetSize < 1 {
		return cfg, fmt.Errorf("dataplane: set sizes %d and %d must be positive", cfg.VerdictCacheSize, cfg.CutSetSize)
	}
	return cfg, nil
}

// DNSQueue reports the queue DNS answers go to.
func (d *Dataplane) DNSQueue() uint16 { return d.cfg.DNSQueue }

// Mode reports the queueing mode in use.
func (d *Dataplane) Mode() Mode { return d.mode }

// Setup installs or replaces the whole ruleset. An existing table is adopted:
// chains are flushed and refilled, the selected-pod, verdict and cut sets
// keep their elements, all in one transaction, so there is no moment at
// which policy is ignored and the kernel's cached verdicts and cuts carry
// over from a previous process. Verdict sets whose timeout or flags differ
// from the Config are recreated empty. In ModeXT the iptables rules are
// installed before the table starts marking packets. Setup is also how a
// damaged ruleset is restored (see Check).
func (d *Dataplane) Setup(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()

	if d.mode == ModeXT {
		if err := installXT(ctx, d.ipt, d.cfg); err != nil {
			return fmt.Errorf("dataplane: install iptables rules: %w", err)
		}
	}
	got, err := d.inspector.inspect(ctx)
	if err != nil {
		return fmt.Errorf("dataplane: inspect table %s: %w", TableName, err)
	}
	adopted, err := d.readAddrs(ctx, d.selected)
	if err != nil {
		return err
	}
	adoptedDNS, err := d.readAddrs(ctx, d.dnsPods)
	if err != nil {
		return err
	}
	stale, err := d.staleObjects(ctx)
	if err != nil {
		return err
	}
	base, err := d.readQueued(ctx)
	if err != nil {
		return err
	}
	recreate := false
	if got != nil {
		for _, name := range []string{setAllow4, setDeny4, setAllow6, setDeny6} {
			g, ok := got.sets[name]
			w := d.want.sets[name]
			if ok && (g.typ != w.typ || g.timeout != w.timeout) {
				recreate = true
			}
		}
	}
	tx := d.nft.NewTransaction()
	writeRuleset(tx, d.cfg, d.mode, stale, recreate)
	if err := d.nft.Run(ctx, tx); err != nil {
		if recreate {
			return fmt.Errorf("dataplane: install table %s: %w", TableName, err)
		}
		// An older version's verdict sets may lack flags that `add set`
		// cannot add to an existing set: try once more with them made anew.
		slog.Info("dataplane: installing the table failed; trying again with the verdict sets recreated", "err", err)
		recreate = true
		tx = d.nft.NewTransaction()
		writeRuleset(tx, d.cfg, d.mode, stale, true)
		if err := d.nft.Run(ctx, tx); err != nil {
			return fmt.Errorf("dataplane: install table %s: %w", TableName, err)
		}
	}
	d.selected.have, d.selected.known = adopted, true
	d.dnsPods.have, d.dnsPods.known = adoptedDNS, true
	d.queuedBase = base
	switch {
	case got == nil || recreate:
		d.verdicts.reset() // the verdict sets are new and empty
	case !d.verdicts.known():
		// A previous process's verdicts: learn what the kernel holds.
		d.verdicts.rebuild(d.listVerdicts(ctx))
	}
	d.setUp = true

	if d.mode == ModeNFT && d.ipt != nil {
		// A previous run in xt mode may have left iptables rules behind;
		// without marks they are inert, so their removal is best effort.
		if err := removeXT(ctx, d.ipt); err != nil {
			slog.Warn("dataplane: could not remove leftover iptables rules", "err", err)
		}
	}
	return nil
}

// readAddrs returns the elements of a pair of address sets of an existing
// table, or an empty map when there is no table yet.
func (d *Dataplane) readAddrs(ctx context.Context, sets addrSets) (map[netip.Addr]struct{}, error) {
	out := map[netip.Addr]struct{}{}
	for _, name := range []string{sets.v4, sets.v6} {
		elems, err := d.nft.ListElements(ctx, "set", name)
		if knftables.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("dataplane: list set %s: %w", name, err)
		}
		for _, e := range elems {
			if len(e.Key) != 1 {
				return nil, fmt.Errorf("dataplane: set %s has element %v, want one address", name, e.Key)
			}
			a, err := netip.ParseAddr(e.Key[0])
			if err != nil {
				return nil, fmt.Errorf("dataplane: set %s: %w", name, err)
			}
			out[a] = struct{}{}
		}
	}
	return out, nil
}

// readQueued returns the packets counter of the queued counter, 0 when there
// is no table or counter yet.
func (d *Dataplane) readQueued(ctx context.Context) (uint64, error) {
	names, err := d.nft.List(ctx, "counter")
	if knftables.IsNotFound(err) || (err == nil && !slices.Contains(names, counterQueued)) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("dataplane: list counters of table %s: %w", TableName, err)
	}
	counters, err := d.nft.ListCounters(ctx)
	if knftables.IsNotFound(err) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("dataplane: list counters of table %s: %w", TableName, err)
	}
	for _, c := range counters {
		// knftables' fake returns nil entries ahead of its counters.
		if c != nil && c.Name == counterQueued && c.Packets != nil {
			return *c.Packets, nil
		}
	}
	return 0, nil
}

// QueuedPackets reports how many packets the table has sent to the queues
// since Setup: those the queuer read, those the kernel dropped or (fail-open)
// accepted because the queue was full, and those sent while nobody listened.
func (d *Dataplane) QueuedPackets(ctx context.Context) (uint64, error) {
	d.mu.Lock()
	base := d.queuedBase
	d.mu.Unlock()
	n, err := d.readQueued(ctx)
	if err != nil {
		return 0, err
	}
	if n < base {
		// The table was recreated behind our back; it counts from zero.
		return n, nil
	}
	return n - base, nil
}

// staleObjects lists the objects of an existing table that the current
// ruleset does not define, so that Setup deletes them.
func (d *Dataplane) staleObjects(ctx context.Context) (map[string][]string, error) {
	all, err := d.nft.ListAll(ctx)
	if knftables.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dataplane: list table %s: %w", TableName, err)
	}
	stale := map[string][]string{}
	for kind, names := range all {
		for _, name := range names {
			if !desiredObject(kind, name) {
				stale[kind] = append(stale[kind], name)
			}
		}
	}
	return stale, nil
}

// Shutdown ends this process's use of the dataplane and leaves the ruleset
// and its caches in place, in both fail modes, so that a restart (a rolling
// update of the DaemonSet) never leaves the node unenforced: cached verdicts
// and cuts keep applying, and packets that need the queuer get what the
// fail mode promises: passed by the queue's bypass flag (fail-open) or
// dropped (fail-closed) until the next Setup adopts the table. Remove takes
// the ruleset away for good.
func (d *Dataplane) Shutdown(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.setUp = false
	d.selected.known, d.dnsPods.known = false, false
	slog.Info("dataplane: leaving the ruleset in place", "table", "inet "+TableName, "failOpen", d.cfg.FailOpen)
	return nil
}

// Remove deletes the table and the iptables rules: traffic flows untouched
// afterwards. It is for uninstalling (`queuer cleanup`), not for restarts.
func (d *Dataplane) Remove(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.setUp = false
	d.selected.known, d.dnsPods.known = false, false
	tx := d.nft.NewTransaction()
	tx.Delete(&knftables.Table{})
	err := d.nft.Run(ctx, tx)
	if err != nil && !knftables.IsNotFound(err) {
		return fmt.Errorf("dataplane: delete table %s: %w", TableName, err)
	}
	d.verdicts.reset()
	if d.ipt != nil {
		if err := removeXT(ctx, d.ipt); err != nil {
			return fmt.Errorf("dataplane: remove iptables rules: %w", err)
		}
	}
	return nil
}
