package engine

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
)

// Kinds as they appear in explanations.
const (
	KindNetworkPolicy              = "NetworkPolicy"
	KindAdminNetworkPolicy         = "AdminNetworkPolicy"
	KindBaselineAdminNetworkPolicy = "BaselineAdminNetworkPolicy"
	KindClusterNetworkPolicy       = "ClusterNetworkPolicy"
)

// namespaceNameLabel is set on every namespace by the apiserver.
const namespaceNameLabel = "kubernetes.io/metadata.name"

// compiler holds the state of one Compile call.
type compiler struct {
	cc         *Compiler
	snap       *Snapshot
	namespaces []*namespace
	nsByName   map[string]*namespace
	// changedSets names the namespace sets (by selector key) that differ
	// from the previous compile's because namespaces were relabelled.
	changedSets map[string]bool
	// deps collects the keys of the namespace sets that the policy being
	// compiled uses.
	deps []string
	// nextNPs and nextCluster collect this compile's policies by API
	// object, for the next compile; slots, the slot of every policy placed
	// in the snapshot.
	nextNPs     map[*networkingv1.NetworkPolicy]*compiled
	nextCluster map[any]*compiled
	slots       []uint32
	// liveRules and liveSets count the rules and namespace sets (with
	// repeats) this compile's policies use, for prune.
	liveRules, liveSets int
}

// Compile turns API objects into a snapshot. It never fails: objects the
// engine cannot use are skipped or reinterpreted fail-closed, and reported
// by Warnings.
func Compile(in Input) *Snapshot { return new(Compiler).Compile(in) }

// Compiler compiles a sequence of inputs, each usually a small change of the
// one before, reusing from one Compile to the next what the inputs share.
// Objects count as unchanged when they are the same pointer as before
// (informers hand out unchanged objects that way). As long as the set of
// namespace names stays the same, it reuses the compiled form of every
// policy object it sees again whose namespace selectors still select the
// same namespaces, and the compiled pods of every namespace whose labels,
// pods, NetworkPolicies and applicable cluster-scoped policies are all the
// ones it compiled before. Its snapshots are the same as Compile's, and
// share the reused parts with the earlier snapshots, which stay valid. A
// Compiler keeps pointers to the objects it compiled, to compare them with
// the next input's. It is not safe for concurrent use; the zero value is
// ready.
type Compiler struct {
	namespaces []*namespace          // the previous compile's, by index
	nsSets     map[string]nsSetEntry // namespace sets over them, by selector key
	npRules    map[string]*npRule    // NetworkPolicy rules, interned by content
	// The compiled policies by API object: NetworkPolicies, and
	// cluster-scoped policies of every kind.
	nps     map[*networkingv1.NetworkPolicy]*compiled
	cluster map[any]*compiled
	records []*nsRecord // the compiled pods, by namespace index
	// The previous input's pods and NetworkPolicies by namespace (see
	// byNamespace).
	pods buckets[*corev1.Pod]
	npIn buckets[*networkingv1.NetworkPolicy]
	// podByIP is the previous snapshot's address index when no two pods
	// claimed an address in it; nil otherwise.
	podByIP  map[netip.Addr]*pod
	nextSlot uint32   // slots below it have been handed out
	free     []uint32 // slots below nextSlot the last snapshot does not use
}

// nsSetEntry is a compiled namespace selector and its set.
type nsSetEntry struct {
	sel *selector
	set nsSet
}

// compiled is a policy object's compiled form as a Compiler keeps it.
type compiled struct {
	np      *netPolicy // a NetworkPolicy's rules
	subject *selector  // a NetworkPolicy's podSelector
	types   [2]bool    // the directions a NetworkPolicy isolates
	// cluster is a cluster-scoped policy; nil when it is ignored.
	cluster  *clusterPolicy
	warnings []string
	// deps are the keys of the namespace sets the policy uses.
	deps []string
}

// Compile is Compile, reusing what in shares with the previous input.
func (cc *Compiler) Compile(in Input) *Snapshot {
	c := &compiler{
		cc: cc,
		snap: &Snapshot{
			nodesByIP: make(map[netip.Addr][]*node, len(in.Nodes)),
		},
		nsByName:    make(map[string]*namespace, len(in.Namespaces)),
		nextNPs:     make(map[*networkingv1.NetworkPolicy]*compiled, len(in.NetworkPolicies)),
		nextCluster: make(map[any]*compiled),
	}
	in = usable(in, c.warnf)
	c.addNamespaces(in)
	c.addNodes(in.Nodes)
	admin, baseline := c.addClusterPolicies(in)
	nps := c.addNetworkPolicies(in.NetworkPolicies)
	records := c.addPods(in.Pods, nps, admin, baseline)
	c.numberPolicies(records)
	cc.namespaces, cc.nps, cc.cluster, cc.records = c.namespaces, c.nextNPs, c.nextCluster, records
	cc.freeSlots(c.slots)
	cc.prune(c.liveRules, c.liveSets)

	s := c.snap
	s.namespaces = c.namespaces
	s.stats.Pods = len(s.pods)
	s.stats.Namespaces = len(c.namespaces)
	s.stats.Nodes = len(in.Nodes)
	slices.Sort(s.warnings)
	s.warnings = slices.Compact(s.warnings)
	return s
}

func (c *compiler) warnf(format string, args ...any) {
	c.snap.warnings = append(c.snap.warnings, fmt.Sprintf(format, args...))
}

// addNamespaces indexes the declared namespaces and any namespace that a pod
// or NetworkPolicy lives in without a Namespace object (labelled only with
// its name, as the apiserver would). When the names are the previous
// compile's, it keeps the previous namespace objects whose labels did not
// change, and works out which namespace sets the others change; otherwise
// nothing of the previous compile can be reused.
func (c *compiler) addNamespaces(in Input) {
	labels := make(map[string]map[string]string, len(in.Namespaces))
	var names []string
	add := func(name string, ls map[string]string) {
		if _, ok := labels[name]; ok || name == "" {
			return
		}
		l := make(map[string]string, len(ls)+1)
		for k, v := range ls {
			l[k] = v
		}
		l[namespaceNameLabel] = name
		labels[name] = l
		names = append(names, name)
	}
	for _, ns := range in.Namespaces {
		add(ns.Name, ns.Labels)
	}
	for _, p := range in.Pods {
		add(p.Namespace, nil)
	}
	for _, np := range in.NetworkPolicies {
		add(np.Namespace, nil)
	}
	slices.Sort(names)
	cc := c.cc
	if !slices.EqualFunc(names, cc.namespaces, func(n string, ns *namespace) bool { return n == ns.name }) {
		*cc = Compiler{}
	}
	if cc.nsSets == nil {
		cc.nsSets = make(map[string]nsSetEntry)
		cc.npRules = make(map[string]*npRule)
	}
	relabelled := false
	c.namespaces = make([]*namespace, len(names))
	for i, name := range names {
		ns := &namespace{name: name, index: i, labels: labels[name]}
		if i < len(cc.namespaces) {
			if maps.Equal(cc.namespaces[i].labels, ns.labels) {
				ns = cc.namespaces[i]
			} else {
				relabelled = true
			}
		}
		c.namespaces[i] = ns
		c.nsByName[name] = ns
	}
	if relabelled {
		c.relabelled()
	}
}

// relabelled recomputes the namespace sets after some namespaces' labels
// changed, and keeps interned only the rules of policies that use none of
// the sets that changed.
func (c *compiler) relabelled() {
	cc := c.cc
	c.changedSets = make(map[string]bool)
	for key, e := range cc.nsSets {
		if set := c.namespaceSet(e.sel); !slices.Equal(set, e.set) {
			c.changedSets[key] = true
			cc.nsSets[key] = nsSetEntry{e.sel, set}
		}
	}
	if len(c.changedSets) == 0 {
		return
	}
	clear(cc.npRules)
	for _, p := range cc.nps {
		if !c.changed(p.deps) {
			p.np.intern(cc.npRules)
		}
	}
}

// changed reports whether one of the namespace sets deps changed.
func (c *compiler) changed(deps []string) bool {
	if len(c.changedSets) == 0 {
		return false
	}
	for _, key := range deps {
		if c.changedSets[key] {
			return true
		}
	}
	return false
}

// intern adds p's rules to the table of interned rules, where their content
// is not there yet.
func (p *netPolicy) intern(rules map[string]*npRule) {
	for d := range 2 {
		for _, r := range p.rules[d] {
			if rules[r.key] == nil {
				rules[r.key] = r
			}
		}
	}
}

// compilePolicy returns obj's compiled form: the previous compile's (from
// prev) when it can be reused, else what compile makes. It records it in
// next. An object met twice in one input is compiled again the second
// time, as Compile would.
func compilePolicy[T comparable](c *compiler, prev, next map[T]*compiled, obj T, compile func(*compiled)) *compiled {
	_, twice := next[obj]
	p := prev[obj]
	if p != nil && !twice && !c.changed(p.deps) {
		c.snap.warnings = append(c.snap.warnings, p.warnings...)
	} else {
		w0 := len(c.snap.warnings)
		c.deps = c.deps[:0]
		p = &compiled{}
		compile(p)
		p.warnings = slices.Clone(c.snap.warnings[w0:])
		slices.Sort(c.deps)
		p.deps = slices.Clone(slices.Compact(c.deps))
		if p.np != nil {
			p.np.slot = c.cc.slot()
		}
		if p.cluster != nil {
			p.cluster.slot = c.cc.slot()
		}
	}
	if !twice {
		next[obj] = p
	}
	switch {
	case p.np != nil:
		c.slots = append(c.slots, p.np.slot)
		c.liveRules += len(p.np.rules[Egress]) + len(p.np.rules[Ingress])
	case p.cluster != nil:
		c.slots = append(c.slots, p.cluster.slot)
	}
	c.liveSets += len(p.deps)
	return p
}

// clusterPolicy compiles a cluster-scoped policy, or reuses it.
func (c *compiler) clusterPolicy(obj any, compile func() *clusterPolicy) *clusterPolicy {
	return compilePolicy(c, c.cc.cluster, c.nextCluster, obj, func(out *compiled) { out.cluster = compile() }).cluster
}

// slot hands out a slot for a new policy object.
func (cc *Compiler) slot() uint32 {
	if n := len(cc.free); n > 0 {
		s := cc.free[n-1]
		cc.free = cc.free[:n-1]
		return s
	}
	cc.nextSlot++
	return cc.nextSlot - 1
}

// freeSlots makes every slot that used does not list free for the next
// compile: the snapshot just made does not use it.
func (cc *Compiler) freeSlots(used []uint32) {
	inUse := make([]bool, cc.nextSlot)
	for _, s := range used {
		inUse[s] = true
	}
	cc.free = cc.free[:0]
	for s, ok := range inUse {
		if !ok {
			cc.free = append(cc.free, uint32(s))
		}
	}
}

// prune drops the interned rules and namespace sets that no policy of the
// last compile uses, once they outnumber the rules and sets (counted with
// repeats) the policies use. It prunes both tables or neither, so that the
// namespace sets of every interned rule stay in nsSets, where relabelled
// finds them when they change.
func (cc *Compiler) prune(rules, sets int) {
	if len(cc.npRules) <= 2*rules+1024 && len(cc.nsSets) <= 2*sets+1024 {
		return
	}
	cc.npRules = make(map[string]*npRule, rules)
	kept := make(map[string]nsSetEntry, sets)
	keep := func(p *compiled) {
		for _, key := range p.deps {
			kept[key] = cc.nsSets[key]
		}
	}
	for _, p := range cc.nps {
		p.np.intern(cc.npRules)
		keep(p)
	}
	for _, p := range cc.cluster {
		keep(p)
	}
	cc.nsSets = kept
}

func (c *compiler) addNodes(nodes []*corev1.Node) {
	for _, n := range nodes {
		nd := &node{name: n.Name, labels: n.Labels}
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				c.warnf("Node %s: address %q is not an IP; ignored", n.Name, a.Address)
				continue
			}
			ip = ip.Unmap()
			if !slices.Contains(c.snap.nodesByIP[ip], nd) {
				c.snap.nodesByIP[ip] = append(c.snap.nodesByIP[ip], nd)
			}
		}
	}
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		if ip, err := netip.ParseAddr(s); err == nil && !slices.Contains(out, ip.Unmap()) {
			out = append(out, ip.Unmap())
		}
	}
	add(p.Status.PodIP)
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	return out
}

func containerPorts(p *corev1.Pod) []containerPort {
	var out []containerPort
	add := func(cs []corev1.Container) {
		for _, ctr := range cs {
			for _, cp := range ctr.Ports {
				proto, ok := protocolOf(&cp.Protocol)
				if !ok || cp.Name == "" || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
					continue
				}
				out = append(out, containerPort{name: cp.Name, proto: proto, port: uint16(cp.ContainerPort)})
			}
		}
	}
	add(p.Spec.Containers)
	// Sidecars (restartable init containers) serve for the pod's lifetime.
	for _, ctr := range p.Spec.InitContainers {
		if ctr.RestartPolicy != nil && *ctr.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			add([]corev1.Container{ctr})
		}
	}
	return out
}

// nsSetFor compiles a namespace selector into a set over the snapshot's
// namespaces, sharing identical sets, and records it among the sets the
// policy being compiled uses.
func (c *compiler) nsSetFor(sel *selector) nsSet {
	key := sel.key()
	c.deps = append(c.deps, key)
	if e, ok := c.cc.nsSets[key]; ok {
		return e.set
	}
	b := c.namespaceSet(sel)
	c.cc.nsSets[key] = nsSetEntry{sel.clone(), b}
	return b
}

// clone copies s, for keeping: callers build some selectors on the stack.
func (s *selector) clone() *selector {
	out := &selector{reqs: slices.Clone(s.reqs), none: s.none}
	for i := range out.reqs {
		out.reqs[i].values = slices.Clone(out.reqs[i].values)
	}
	return out
}

// nsSetOf is the set holding one namespace.
func (c *compiler) nsSetOf(name string) nsSet {
	return c.nsSetFor(&selector{reqs: []requirement{{key: namespaceNameLabel, op: opIn, values: []string{name}}}})
}

// keyOrAll is key, or "*" for a nil selector (every pod).
func (s *selector) keyOrAll() string {
	if s == nil {
		return "*"
	}
	return s.key()
}

// key is a canonical text form of a compiled selector, for sharing. Fields
// are separated by bytes that labels cannot contain.
func (s *selector) key() string {
	if s.none {
		return "\x00none"
	}
	var b strings.Builder
	for _, r := range s.reqs {
		b.WriteString(r.key)
		b.WriteByte(0)
		b.WriteByte('0' + byte(r.op))
		for _, v := range r.values {
			b.WriteByte(0)
			b.WriteString(v)
		}
		b.WriteByte(1)
	}
	return b.String()
}

// portsKey is a canonical text form of a compiled port set.
func (ps portSet) key(b *strings.Builder) {
	if ps.any {
		b.WriteString("*")
	}
	for _, e := range ps.entries {
		b.WriteByte('0' + byte(e.proto))
		b.WriteString(strconv.Itoa(int(e.lo)))
		b.WriteByte('-')
		b.WriteString(strconv.Itoa(int(e.hi)))
		b.WriteByte(0)
		b.WriteString(e.name)
		b.WriteByte(1)
	}
	b.WriteByte(2)
}

// ---- cluster-scoped policies ----------------------------------------------

// addClusterPolicies compiles the cluster-scoped policies and returns them
// by stage, each in evaluation order.
func (c *compiler) addClusterPolicies(in Input) (admin, baseline []*clusterPolicy) {
	for _, p := range in.AdminNetworkPolicies {
		cp := c.clusterPolicy(p, func() *clusterPolicy { return c.compileANP(p) })
		admin = append(admin, cp)
		c.snap.stats.AdminNetworkPolicies++
	}
	for _, p := range in.ClusterNetworkPolicies {
		cp := c.clusterPolicy(p, func() *clusterPolicy { return c.compileCNP(p) })
		if cp == nil {
			continue
		}
		c.snap.stats.ClusterNetworkPolicies++
		if cp.tier == TierClusterNetworkPolicyAdmin {
			admin = append(admin, cp)
		} else {
			baseline = append(baseline, cp)
		}
	}
	var banp []*clusterPolicy
	for _, p := range in.BaselineAdminNetworkPolicies {
		if p.Name != "default" {
			c.warnf("BaselineAdminNetworkPolicy %s: only the singleton named \"default\" is honoured; ignored", p.Name)
			continue
		}
		banp = append(banp, c.clusterPolicy(p, func() *clusterPolicy { return c.compileBANP(p) }))
		c.snap.stats.BaselineAdminNetworkPolicies++
	}
	// Admin tier: ascending priority. Equal priorities are undefined
	// upstream; we order them by kind (ANP before CNP) and name so verdicts
	// are deterministic.
	order := func(a, b *clusterPolicy) int {
		return cmp.Or(cmp.Compare(a.priority, b.priority), cmp.Compare(a.tier, b.tier), strings.Compare(a.ref.Name, b.ref.Name))
	}
	slices.SortFunc(admin, order)
	slices.SortFunc(baseline, order)
	// The baseline tier: ClusterNetworkPolicy Baseline by priority, then the
	// BaselineAdminNetworkPolicy.
	baseline = append(baseline, banp...)
	for _, cp := range slices.Concat(admin, baseline) {
		c.snap.stats.Rules += len(cp.rules[Egress]) + len(cp.rules[Ingress])
	}
	return admin, baseline
}

// appliesTo reports whether the policy can select pods of ns: it has rules
// and its subject takes in the namespace.
func (cp *clusterPolicy) appliesTo(ns *namespace) bool {
	return (len(cp.rules[Egress]) > 0 || len(cp.rules[Ingress]) > 0) && cp.subject.ns.has(ns.index)
}

func (c *compiler) compileSubject(ref PolicyRef, nsSel *metav1.LabelSelector, pods *v1alpha1.NamespacedPod) (subject, bool) {
	switch {
	case nsSel != nil && pods == nil:
		sel := c.selector(ref, "subject.namespaces", nsSel)
		return subject{ns: c.nsSetFor(sel)}, true
	case pods != nil && nsSel == nil:
		nsel := c.selector(ref, "subject.pods.namespaceSelector", &pods.NamespaceSelector)
		psel := c.selector(ref, "subject.pods.podSelector", &pods.PodSelector)
		return subject{ns: c.nsSetFor(nsel), pods: psel}, true
	}
	c.warnf("%s: subject must set exactly one of namespaces or pods; policy ignored", ref)
	return subject{}, false
}

// selector compiles a selector, recording a warning when it is invalid (it
// then matches nothing).
func (c *compiler) selector(ref PolicyRef, field string, ls *metav1.LabelSelector) *selector {
	s, err := compileSelector(ls)
	if err != nil {
		c.warnf("%s: %s: %v; it matches nothing", ref, field, err)
	}
	return s
}

func (c *compiler) compileANP(p *v1alpha1.AdminNetworkPolicy) *clusterPolicy {
	ref := PolicyRef{Kind: KindAdminNetworkPolicy, Name: p.Name}
	cp := &clusterPolicy{ref: ref, tier: TierAdminNetworkPolicy, priority: p.Spec.Priority}
	sub, ok := c.compileSubject(ref, p.Spec.Subject.Namespaces, p.Spec.Subject.Pods)
	if !ok {
		return cp // no subject: selects nothing
	}
	cp.subject = sub
	for i, r := range p.Spec.Ingress {
		peers := make([]rawPeer, len(r.From))
		for j, f := range r.From {
			peers[j] = rawPeer{namespaces: f.Namespaces, pods: f.Pods}
		}
		cp.rules[Ingress] = append(cp.rules[Ingress], c.clusterRule(ref, Ingress, i, r.Name, anpAction(string(r.Action)), peers, c.anpPorts(ref, r.Ports)))
	}
	for i, r := range p.Spec.Egress {
		peers := make([]rawPeer, len(r.To))
		for j, t := range r.To {
			peers[j] = rawPeer{namespaces: t.Namespaces, pods: t.Pods, nodes: t.Nodes, networks: cidrs(t.Networks), domainNames: domains(t.DomainNames)}
		}
		cp.rules[Egress] = append(cp.rules[Egress], c.clusterRule(ref, Egress, i, r.Name, anpAction(string(r.Action)), peers, c.anpPorts(ref, r.Ports)))
	}
	return cp
}

func (c *compiler) compileBANP(p *v1alpha1.BaselineAdminNetworkPolicy) *clusterPolicy {
	ref := PolicyRef{Kind: KindBaselineAdminNetworkPolicy, Name: p.Name}
	cp := &clusterPolicy{ref: ref, tier: TierBaselineAdminNetworkPolicy}
	sub, ok := c.compileSubject(ref, p.Spec.Subject.Namespaces, p.Spec.Subject.Pods)
	if !ok {
		return cp
	}
	cp.subject = sub
	for i, r := range p.Spec.Ingress {
		peers := make([]rawPeer, len(r.From))
		for j, f := range r.From {
			peers[j] = rawPeer{namespaces: f.Namespaces, pods: f.Pods}
		}
		cp.rules[Ingress] = append(cp.rules[Ingress], c.clusterRule(ref, Ingress, i, r.Name, banpAction(string(r.Action)), peers, c.anpPorts(ref, r.Ports)))
	}
	for i, r := range p.Spec.Egress {
		peers := make([]rawPeer, len(r.To))
		for j, t := range r.To {
			peers[j] = rawPeer{namespaces: t.Namespaces, pods: t.Pods, nodes: t.Nodes, networks: cidrs(t.Networks)}
		}
		cp.rules[Egress] = append(cp.rules[Egress], c.clusterRule(ref, Egress, i, r.Name, banpAction(string(r.Action)), peers, c.anpPorts(ref, r.Ports)))
	}
	return cp
}

// compileCNP compiles a ClusterNetworkPolicy; nil means it is ignored.
func (c *compiler) compileCNP(p *v1alpha2.ClusterNetworkPolicy) *clusterPolicy {
	ref := PolicyRef{Kind: KindClusterNetworkPolicy, Name: p.Name}
	cp := &clusterPolicy{ref: ref, priority: p.Spec.Priority}
	switch p.Spec.Tier {
	case v1alpha2.AdminTier:
		cp.tier = TierClusterNetworkPolicyAdmin
	case v1alpha2.BaselineTier:
		cp.tier = TierClusterNetworkPolicyBaseline
	default:
		c.warnf("%s: unknown tier %q; policy ignored", ref, p.Spec.Tier)
		return nil
	}
	var pods *v1alpha1.NamespacedPod
	if sp := p.Spec.Subject.Pods; sp != nil {
		pods = &v1alpha1.NamespacedPod{NamespaceSelector: sp.NamespaceSelector, PodSelector: sp.PodSelector}
	}
	sub, ok := c.compileSubject(ref, p.Spec.Subject.Namespaces, pods)
	if !ok {
		return cp
	}
	cp.subject = sub
	for i, r := range p.Spec.Ingress {
		peers := make([]rawPeer, len(r.From))
		for j, f := range r.From {
			peers[j] = rawPeer{namespaces: f.Namespaces, pods: cnpPods(f.Pods)}
		}
		cp.rules[Ingress] = append(cp.rules[Ingress], c.clusterRule(ref, Ingress, i, r.Name, cnpAction(r.Action), peers, c.cnpPorts(ref, r.Protocols)))
	}
	for i, r := range p.Spec.Egress {
		peers := make([]rawPeer, len(r.To))
		for j, t := range r.To {
			nets := make([]string, len(t.Networks))
			for k, n := range t.Networks {
				nets[k] = string(n)
			}
			peers[j] = rawPeer{namespaces: t.Namespaces, pods: cnpPods(t.Pods), nodes: t.Nodes, networks: nets, domainNames: domains(t.DomainNames)}
		}
		cp.rules[Egress] = append(cp.rules[Egress], c.clusterRule(ref, Egress, i, r.Name, cnpAction(r.Action), peers, c.cnpPorts(ref, r.Protocols)))
	}
	return cp
}

func cnpPods(p *v1alpha2.NamespacedPod) *v1alpha1.NamespacedPod {
	if p == nil {
		return nil
	}
	return &v1alpha1.NamespacedPod{NamespaceSelector: p.NamespaceSelector, PodSelector: p.PodSelector}
}

func cidrs(in []v1alpha1.CIDR) []string {
	out := make([]string, len(in))
	for i, c := range in {
		out[i] = string(c)
	}
	return out
}

func anpAction(a string) Action {
	switch a {
	case string(v1alpha1.AdminNetworkPolicyRuleActionAllow):
		return ActionAllow
	case string(v1alpha1.AdminNetworkPolicyRuleActionDeny):
		return ActionDeny
	case string(v1alpha1.AdminNetworkPolicyRuleActionPass):
		return ActionPass
	}
	return ActionNone
}

func banpAction(a string) Action {
	switch a {
	case string(v1alpha1.BaselineAdminNetworkPolicyRuleActionAllow):
		return ActionAllow
	case string(v1alpha1.BaselineAdminNetworkPolicyRuleActionDeny):
		return ActionDeny
	}
	return ActionNone
}

func cnpAction(a v1alpha2.ClusterNetworkPolicyRuleAction) Action {
	switch a {
	case v1alpha2.ClusterNetworkPolicyRuleActionAccept:
		return ActionAllow
	case v1alpha2.ClusterNetworkPolicyRuleActionDeny:
		return ActionDeny
	case v1alpha2.ClusterNetworkPolicyRuleActionPass:
		return ActionPass
	}
	return ActionNone
}

// compiledPorts is a compiled port list and whether it was understood.
type compiledPorts struct {
	set portSet
	ok  bool
}

// rawPeer is the union of the peer shapes of ANP, BANP and CNP.
type rawPeer struct {
	namespaces  *metav1.LabelSelector
	pods        *v1alpha1.NamespacedPod
	nodes       *metav1.LabelSelector
	networks    []string
	domainNames []string
}

// domains turns the API's domain names into strings.
func domains[T ~string](ds []T) []string {
	if len(ds) == 0 {
		return nil
	}
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = string(d)
	}
	return out
}

// clusterRule compiles one rule. A peer or port the engine cannot interpret
// (no field set — a newer API — or an invalid value) makes the rule fail
// closed, as the API asks: an Allow rule matches nothing; a Deny or Pass
// rule denies everything.
func (c *compiler) clusterRule(ref PolicyRef, d Direction, index int, name string, action Action, raw []rawPeer, ports compiledPorts) clusterRule {
	r := clusterRule{name: name, index: index, action: action, ports: ports.set}
	where := fmt.Sprintf("%s: %s rule %d", ref, d, index)
	if name != "" {
		where += fmt.Sprintf(" %q", name)
	}
	known := ports.ok
	if action == ActionNone {
		c.warnf("%s: unknown action; the rule matches nothing", where)
		return clusterRule{name: name, index: index}
	}
	for _, p := range raw {
		set := 0
		if p.namespaces != nil {
			set++
			sel := c.selector(ref, "peer namespaces", p.namespaces)
			r.peers = append(r.peers, clusterPeer{kind: peerPods, ns: c.nsSetFor(sel)})
		}
		if p.pods != nil {
			set++
			nsel := c.selector(ref, "peer pods.namespaceSelector", &p.pods.NamespaceSelector)
			psel := c.selector(ref, "peer pods.podSelector", &p.pods.PodSelector)
			if psel.empty() {
				psel = nil
			}
			r.peers = append(r.peers, clusterPeer{kind: peerPods, ns: c.nsSetFor(nsel), pods: psel})
		}
		if p.nodes != nil {
			set++
			r.peers = append(r.peers, clusterPeer{kind: peerNodes, nodes: c.selector(ref, "peer nodes", p.nodes)})
		}
		if len(p.networks) > 0 {
			set++
			var nets []netip.Prefix
			for _, n := range p.networks {
				pfx, err := netip.ParsePrefix(n)
				if err != nil {
					c.warnf("%s: network %q is not a CIDR", where, n)
					known = false
					continue
				}
				nets = append(nets, pfx.Masked())
			}
			r.peers = append(r.peers, clusterPeer{kind: peerNetworks, nets: nets})
		}
		if len(p.domainNames) > 0 {
			set++
			peer := clusterPeer{kind: peerDomains}
			for _, d := range p.domainNames {
				dp, ok := parseDomainPattern(d)
				if !ok {
					c.warnf("%s: domain name %q is not a name or a \"*.\" wildcard; failing closed", where, d)
					known = false
					continue
				}
				peer.domains = append(peer.domains, dp)
			}
			if d != Egress || action != ActionAllow {
				c.warnf("%s: domainNames peers are only for egress %s rules; failing closed", where, ActionAllow)
				known = false
			}
			r.peers = append(r.peers, peer)
		}
		if set != 1 {
			c.warnf("%s: a peer must set exactly one field (it sets %d); failing closed", where, set)
			known = false
		}
	}
	if !known {
		if action == ActionAllow {
			return clusterRule{name: name, index: index, action: action}
		}
		c.warnf("%s: %s fails closed as Deny for all traffic", where, action)
		return clusterRule{name: name, index: index, action: ActionDeny, all: true}
	}
	return r
}

// anpPorts compiles ANP/BANP ports; ok is false when a port cannot be
// interpreted.
func (c *compiler) anpPorts(ref PolicyRef, ports *[]v1alpha1.AdminNetworkPolicyPort) compiledPorts {
	if ports == nil || len(*ports) == 0 {
		return compiledPorts{anyPort, true}
	}
	var ps portSet
	for _, p := range *ports {
		n := 0
		if p.PortNumber != nil {
			n++
			proto, ok := protocolOf(&p.PortNumber.Protocol)
			lo, hi, okr := portRange(p.PortNumber.Port, p.PortNumber.Port)
			if !ok || !okr {
				c.warnf("%s: port %s/%d is invalid", ref, p.PortNumber.Protocol, p.PortNumber.Port)
				return compiledPorts{}
			}
			ps.entries = append(ps.entries, portEntry{proto: proto, lo: lo, hi: hi})
		}
		if p.NamedPort != nil {
			n++
			ps.entries = append(ps.entries, portEntry{name: *p.NamedPort})
		}
		if p.PortRange != nil {
			n++
			proto, ok := protocolOf(&p.PortRange.Protocol)
			lo, hi, okr := portRange(p.PortRange.Start, p.PortRange.End)
			if !ok || !okr {
				c.warnf("%s: port range %s/%d-%d is invalid", ref, p.PortRange.Protocol, p.PortRange.Start, p.PortRange.End)
				return compiledPorts{}
			}
			ps.entries = append(ps.entries, portEntry{proto: proto, lo: lo, hi: hi})
		}
		if n != 1 {
			c.warnf("%s: a port must set exactly one field (it sets %d)", ref, n)
			return compiledPorts{}
		}
	}
	return compiledPorts{ps, true}
}

// cnpPorts compiles ClusterNetworkPolicy protocols; ok is false when an
// entry cannot be interpreted.
func (c *compiler) cnpPorts(ref PolicyRef, protos []v1alpha2.ClusterNetworkPolicyProtocol) compiledPorts {
	if len(protos) == 0 {
		return compiledPorts{anyPort, true}
	}
	var ps portSet
	for _, p := range protos {
		n := 0
		add := func(proto Protocol, port *v1alpha2.Port) bool {
			n++
			if port == nil {
				ps.entries = append(ps.entries, portEntry{proto: proto, lo: 0, hi: 65535})
				return true
			}
			var lo, hi uint16
			var ok bool
			switch {
			case port.Range != nil && port.Number == 0:
				lo, hi, ok = portRange(port.Range.Start, port.Range.End)
			case port.Range == nil && port.Number != 0:
				lo, hi, ok = portRange(port.Number, port.Number)
			}
			if !ok {
				c.warnf("%s: destinationPort of %s is invalid", ref, proto)
				return false
			}
			ps.entries = append(ps.entries, portEntry{proto: proto, lo: lo, hi: hi})
			return true
		}
		ok := true
		if p.TCP != nil {
			ok = add(ProtocolTCP, p.TCP.DestinationPort) && ok
		}
		if p.UDP != nil {
			ok = add(ProtocolUDP, p.UDP.DestinationPort) && ok
		}
		if p.SCTP != nil {
			ok = add(ProtocolSCTP, p.SCTP.DestinationPort) && ok
		}
		if p.DestinationNamedPort != "" {
			n++
			ps.entries = append(ps.entries, portEntry{name: p.DestinationNamedPort})
		}
		if !ok || n != 1 {
			if n != 1 {
				c.warnf("%s: a protocols entry must set exactly one field (it sets %d)", ref, n)
			}
			return compiledPorts{}
		}
	}
	return compiledPorts{ps, true}
}

// ---- NetworkPolicy ----------------------------------------------------------

// addNetworkPolicies compiles the NetworkPolicies and returns them by
// namespace index, each namespace's by name.
func (c *compiler) addNetworkPolicies(nps []*networkingv1.NetworkPolicy) [][]*compiled {
	byNS := byNamespace(c, nps, &c.cc.npIn)
	out := make([][]*compiled, len(byNS))
	for i, objs := range byNS {
		out[i] = make([]*compiled, len(objs))
		for j, np := range objs {
			p := compilePolicy(c, c.cc.nps, c.nextNPs, np, func(out *compiled) { c.compileNetworkPolicy(np, out) })
			out[i][j] = p
			c.snap.stats.NetworkPolicies++
			c.snap.stats.Rules += len(p.np.rules[Ingress]) + len(p.np.rules[Egress])
		}
	}
	return out
}

// compileNetworkPolicy compiles np's rules and subject selector into out.
func (c *compiler) compileNetworkPolicy(np *networkingv1.NetworkPolicy, out *compiled) {
	ref := PolicyRef{Kind: KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name}
	out.np, out.types = &netPolicy{ref: ref}, policyTypes(np)
	p := out.np
	if out.types[Ingress] {
		for _, r := range np.Spec.Ingress {
			p.rules[Ingress] = append(p.rules[Ingress], c.npRule(ref, np.Namespace, r.From, r.Ports))
		}
	}
	if out.types[Egress] {
		for _, r := range np.Spec.Egress {
			p.rules[Egress] = append(p.rules[Egress], c.npRule(ref, np.Namespace, r.To, r.Ports))
		}
	}
	out.subject = c.selector(ref, "podSelector", &np.Spec.PodSelector)
}

// policyTypes returns the directions a NetworkPolicy isolates, defaulting
// as the API does when policyTypes is empty: Ingress always, Egress when
// there are egress rules.
func policyTypes(np *networkingv1.NetworkPolicy) [2]bool {
	var t [2]bool
	if len(np.Spec.PolicyTypes) == 0 {
		t[Ingress] = true
		t[Egress] = len(np.Spec.Egress) > 0
		return t
	}
	for _, pt := range np.Spec.PolicyTypes {
		switch pt {
		case networkingv1.PolicyTypeIngress:
			t[Ingress] = true
		case networkingv1.PolicyTypeEgress:
			t[Egress] = true
		}
	}
	return t
}

// npRule compiles a NetworkPolicy rule and returns the shared instance of
// identical rules.
func (c *compiler) npRule(ref PolicyRef, policyNS string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) *npRule {
	r := npRule{allPeers: len(peers) == 0, ports: c.npPorts(ref, ports)}
	var key strings.Builder
	if r.allPeers {
		key.WriteString("all")
	}
	r.ports.key(&key)
	for _, p := range peers {
		switch {
		case p.IPBlock != nil:
			if p.PodSelector != nil || p.NamespaceSelector != nil {
				c.warnf("%s: ipBlock cannot be combined with selectors in one peer; peer ignored", ref)
				continue
			}
			cidr, err := netip.ParsePrefix(p.IPBlock.CIDR)
			if err != nil {
				c.warnf("%s: ipBlock cidr %q is invalid; peer ignored", ref, p.IPBlock.CIDR)
				continue
			}
			peer := npPeer{ipBlock: true, cidr: cidr.Masked()}
			for _, e := range p.IPBlock.Except {
				x, err := netip.ParsePrefix(e)
				if err != nil {
					// Ignoring an except would widen the allow: drop the peer.
					c.warnf("%s: ipBlock except %q is invalid; peer ignored", ref, e)
					peer = npPeer{}
					break
				}
				peer.except = append(peer.except, x.Masked())
			}
			if peer.ipBlock {
				r.peers = append(r.peers, peer)
				key.WriteString("ip" + peer.cidr.String())
				for _, x := range peer.except {
					key.WriteString("!" + x.String())
				}
				key.WriteByte(2)
			}
		case p.NamespaceSelector != nil:
			nsSel := c.selector(ref, "namespaceSelector", p.NamespaceSelector)
			var pods *selector
			if p.PodSelector != nil {
				if pods = c.selector(ref, "podSelector", p.PodSelector); pods.empty() {
					pods = nil
				}
			}
			r.peers = append(r.peers, npPeer{ns: c.nsSetFor(nsSel), pods: pods})
			key.WriteString("ns" + nsSel.key() + "\x02" + pods.keyOrAll() + "\x02")
		case p.PodSelector != nil:
			pods := c.selector(ref, "podSelector", p.PodSelector)
			if pods.empty() {
				pods = nil
			}
			r.peers = append(r.peers, npPeer{ns: c.nsSetOf(policyNS), pods: pods})
			key.WriteString("in" + policyNS + "\x02" + pods.keyOrAll() + "\x02")
		default:
			c.warnf("%s: a peer sets none of podSelector, namespaceSelector, ipBlock; it matches nothing", ref)
		}
	}
	r.key = key.String()
	if shared := c.cc.npRules[r.key]; shared != nil {
		return shared
	}
	c.cc.npRules[r.key] = &r
	return &r
}

func (c *compiler) npPorts(ref PolicyRef, ports []networkingv1.NetworkPolicyPort) portSet {
	if len(ports) == 0 {
		return anyPort
	}
	var ps portSet
	for _, p := range ports {
		proto, ok := protocolOf(p.Protocol)
		if !ok {
			c.warnf("%s: protocol %q is not supported; port ignored", ref, *p.Protocol)
			continue
		}
		switch {
		case p.Port == nil:
			ps.entries = append(ps.entries, portEntry{proto: proto, lo: 0, hi: 65535})
		case p.Port.Type == intstr.String:
			if p.EndPort != nil {
				c.warnf("%s: endPort cannot be used with named port %q; port ignored", ref, p.Port.StrVal)
				continue
			}
			ps.entries = append(ps.entries, portEntry{proto: proto, name: p.Port.StrVal})
		default:
			hi := p.Port.IntVal
			if p.EndPort != nil {
				hi = *p.EndPort
			}
			lo, h, ok := portRange(p.Port.IntVal, hi)
			if !ok {
				c.warnf("%s: port %d-%d is invalid; port ignored", ref, p.Port.IntVal, hi)
				continue
			}
			ps.entries = append(ps.entries, portEntry{proto: proto, lo: lo, hi: h})
		}
	}
	return ps
}
