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
	snap       *Snapshot
	namespaces []*namespace
	nsByName   map[string]*namespace
	podsByNS   [][]*pod // by namespace index
	nsSets     map[string]nsSet
	npRules    map[string]*npRule // interned NetworkPolicy rules by content
	// prevNPs are the previous compile's NetworkPolicies, when they can be
	// reused (the namespaces are the same); nextNPs collects this one's.
	prevNPs, nextNPs map[*networkingv1.NetworkPolicy]*compiledNP
}

// sameNamespaces reports whether two compiles' namespaces have the same
// names, order and labels, so that namespace bit sets carry over.
func sameNamespaces(a, b []*namespace) bool {
	return slices.EqualFunc(a, b, func(x, y *namespace) bool {
		return x.name == y.name && maps.Equal(x.labels, y.labels)
	})
}

// Compile turns API objects into a snapshot. It never fails: objects the
// engine cannot use are skipped or reinterpreted fail-closed, and reported
// by Warnings.
func Compile(in Input) *Snapshot { return new(Compiler).Compile(in) }

// Compiler compiles a sequence of inputs, each usually a small change of the
// one before, reusing from one Compile to the next what the inputs share:
// the compiled rules of every NetworkPolicy object that is the same pointer
// as before (informers hand out unchanged objects that way), as long as the
// namespaces and their labels did not change. Its snapshots are the same as
// Compile's. A Compiler is not safe for concurrent use; the zero value is
// ready.
type Compiler struct {
	namespaces []*namespace // the previous input's, in index order
	nps        map[*networkingv1.NetworkPolicy]*compiledNP
}

// compiledNP is a NetworkPolicy's compiled form as a Compiler keeps it.
type compiledNP struct {
	policy   *netPolicy
	subject  *selector
	types    [2]bool
	warnings []string
}

// Compile is Compile, reusing what in shares with the previous input.
func (cc *Compiler) Compile(in Input) *Snapshot {
	c := &compiler{
		snap: &Snapshot{
			podByIP:   make(map[netip.Addr]*pod, len(in.Pods)),
			nodesByIP: make(map[netip.Addr][]*node, len(in.Nodes)),
		},
		nsByName: make(map[string]*namespace, len(in.Namespaces)),
		nsSets:   make(map[string]nsSet),
		npRules:  make(map[string]*npRule),
		nextNPs:  make(map[*networkingv1.NetworkPolicy]*compiledNP, len(in.NetworkPolicies)),
	}
	in = usable(in, c.warnf)
	c.addNamespaces(in)
	if sameNamespaces(cc.namespaces, c.namespaces) {
		c.prevNPs = cc.nps
	}
	c.addNodes(in.Nodes)
	c.addPods(in.Pods)
	c.addClusterPolicies(in)
	c.addNetworkPolicies(in.NetworkPolicies)
	cc.namespaces, cc.nps = c.namespaces, c.nextNPs

	s := c.snap
	s.namespaces = c.namespaces
	s.stats.Pods = len(s.pods)
	s.stats.Namespaces = len(c.namespaces)
	s.stats.Nodes = len(in.Nodes)
	for _, p := range s.pods {
		if p.selected() {
			s.stats.SelectedPods++
		}
	}
	s.numberPolicies()
	slices.Sort(s.warnings)
	s.warnings = slices.Compact(s.warnings)
	return s
}

func (c *compiler) warnf(format string, args ...any) {
	c.snap.warnings = append(c.snap.warnings, fmt.Sprintf(format, args...))
}

// addNamespaces indexes the declared namespaces and any namespace that a pod
// or NetworkPolicy lives in without a Namespace object (labelled only with
// its name, as the apiserver would).
func (c *compiler) addNamespaces(in Input) {
	add := func(name string, labels map[string]string) {
		if name == "" || c.nsByName[name] != nil {
			return
		}
		l := make(map[string]string, len(labels)+1)
		for k, v := range labels {
			l[k] = v
		}
		l[namespaceNameLabel] = name
		ns := &namespace{name: name, labels: l}
		c.nsByName[name] = ns
		c.namespaces = append(c.namespaces, ns)
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
	slices.SortFunc(c.namespaces, func(a, b *namespace) int { return strings.Compare(a.name, b.name) })
	for i, ns := range c.namespaces {
		ns.index = i
	}
	c.podsByNS = make([][]*pod, len(c.namespaces))
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

// addPods indexes the pods that take part in policy: not host-network (their
// IP is the node's), not finished (Succeeded and Failed pods' IPs are reused),
// and with an IP. Terminating pods still count until they are gone.
func (c *compiler) addPods(pods []*corev1.Pod) {
	sorted := slices.Clone(pods)
	slices.SortFunc(sorted, func(a, b *corev1.Pod) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	for _, p := range sorted {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		ips := podIPs(p)
		if len(ips) == 0 {
			continue
		}
		pd := &pod{
			ref:    PodRef{Namespace: p.Namespace, Name: p.Name},
			labels: p.Labels,
			ns:     c.nsByName[p.Namespace],
			node:   p.Spec.NodeName,
			ips:    ips,
			ports:  containerPorts(p),
		}
		c.snap.pods = append(c.snap.pods, pd)
		c.podsByNS[pd.ns.index] = append(c.podsByNS[pd.ns.index], pd)
		for _, ip := range ips {
			old := c.snap.podByIP[ip]
			if old == nil {
				c.snap.podByIP[ip] = pd
				continue
			}
			// Two live pods claim one IP: one of them is stale. Prefer the
			// one that is not terminating; otherwise the first by name.
			c.warnf("pods %s/%s and %s/%s both have IP %s", old.ref.Namespace, old.ref.Name, pd.ref.Namespace, pd.ref.Name, ip)
			if terminating(sorted, old.ref) && p.DeletionTimestamp == nil {
				c.snap.podByIP[ip] = pd
			}
		}
	}
}

func terminating(pods []*corev1.Pod, ref PodRef) bool {
	i, ok := slices.BinarySearchFunc(pods, ref, func(p *corev1.Pod, r PodRef) int {
		return cmp.Or(strings.Compare(p.Namespace, r.Namespace), strings.Compare(p.Name, r.Name))
	})
	return ok && pods[i].DeletionTimestamp != nil
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
// namespaces, sharing identical sets.
func (c *compiler) nsSetFor(sel *selector) nsSet {
	key := sel.key()
	if b, ok := c.nsSets[key]; ok {
		return b
	}
	b := c.namespaceSet(sel)
	c.nsSets[key] = b
	return b
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

func (c *compiler) addClusterPolicies(in Input) {
	var admin, baseline []*clusterPolicy
	for _, p := range in.AdminNetworkPolicies {
		cp := c.compileANP(p)
		admin = append(admin, cp)
		c.snap.stats.AdminNetworkPolicies++
	}
	for _, p := range in.ClusterNetworkPolicies {
		cp, ok := c.compileCNP(p)
		if !ok {
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
		banp = append(banp, c.compileBANP(p))
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

	for _, cp := range admin {
		c.attach(cp, func(p *pod, d Direction) { p.admin[d] = append(p.admin[d], cp) })
	}
	for _, cp := range baseline {
		c.attach(cp, func(p *pod, d Direction) { p.baseline[d] = append(p.baseline[d], cp) })
	}
}

// attach calls add for every pod the policy's subject selects, for each
// direction in which the policy has rules.
func (c *compiler) attach(cp *clusterPolicy, add func(*pod, Direction)) {
	for d := range 2 {
		c.snap.stats.Rules += len(cp.rules[d])
	}
	if len(cp.rules[Egress]) == 0 && len(cp.rules[Ingress]) == 0 {
		return
	}
	for i, ns := range c.namespaces {
		if !cp.subject.ns.has(ns.index) {
			continue
		}
		for _, p := range c.podsByNS[i] {
			if cp.subject.pods != nil && !cp.subject.pods.matches(p.labels) {
				continue
			}
			for d := Egress; d <= Ingress; d++ {
				if len(cp.rules[d]) > 0 {
					add(p, d)
				}
			}
		}
	}
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

func (c *compiler) compileCNP(p *v1alpha2.ClusterNetworkPolicy) (*clusterPolicy, bool) {
	ref := PolicyRef{Kind: KindClusterNetworkPolicy, Name: p.Name}
	cp := &clusterPolicy{ref: ref, priority: p.Spec.Priority}
	switch p.Spec.Tier {
	case v1alpha2.AdminTier:
		cp.tier = TierClusterNetworkPolicyAdmin
	case v1alpha2.BaselineTier:
		cp.tier = TierClusterNetworkPolicyBaseline
	default:
		c.warnf("%s: unknown tier %q; policy ignored", ref, p.Spec.Tier)
		return nil, false
	}
	var pods *v1alpha1.NamespacedPod
	if sp := p.Spec.Subject.Pods; sp != nil {
		pods = &v1alpha1.NamespacedPod{NamespaceSelector: sp.NamespaceSelector, PodSelector: sp.PodSelector}
	}
	sub, ok := c.compileSubject(ref, p.Spec.Subject.Namespaces, pods)
	if !ok {
		return cp, true
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
	return cp, true
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

func (c *compiler) addNetworkPolicies(nps []*networkingv1.NetworkPolicy) {
	sorted := slices.Clone(nps)
	slices.SortFunc(sorted, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	// Namespaces with many pods and several policies get a label index, so
	// that a policy's podSelector looks only at pods that can match.
	perNS := make([]int, len(c.namespaces))
	for _, np := range sorted {
		perNS[c.nsByName[np.Namespace].index]++
	}
	indexes := make([]labelIndex, len(c.namespaces))
	for _, np := range sorted {
		c.snap.stats.NetworkPolicies++
		cp := c.reuseNetworkPolicy(np)
		if cp == nil {
			cp = c.compileNetworkPolicy(np)
		}
		c.nextNPs[np] = cp
		p, types := cp.policy, cp.types
		c.snap.stats.Rules += len(p.rules[Ingress]) + len(p.rules[Egress])
		ns := c.nsByName[np.Namespace].index
		pods := c.podsByNS[ns]
		if indexes[ns] == nil && perNS[ns] >= 4 && len(pods) >= 32 {
			indexes[ns] = newLabelIndex(pods)
		}
		indexes[ns].forEachMatch(pods, cp.subject, func(pd *pod) {
			for d := Egress; d <= Ingress; d++ {
				if types[d] {
					pd.np[d] = append(pd.np[d], p)
				}
			}
		})
	}
	// Flatten each pod's rules, keeping the first of identical rules.
	seen := make(map[*npRule]bool)
	var scratch []npRuleRef
	for _, pd := range c.snap.pods {
		for d := range 2 {
			clear(seen)
			scratch = scratch[:0]
			for _, p := range pd.np[d] {
				for i, r := range p.rules[d] {
					if !seen[r] {
						seen[r] = true
						scratch = append(scratch, npRuleRef{rule: r, policy: p, index: i})
					}
				}
			}
			if len(scratch) > 0 {
				pd.npRules[d] = slices.Clone(scratch) // one allocation of the final size
			}
		}
	}
}

// compileNetworkPolicy compiles np's rules and subject selector.
func (c *compiler) compileNetworkPolicy(np *networkingv1.NetworkPolicy) *compiledNP {
	w0 := len(c.snap.warnings)
	ref := PolicyRef{Kind: KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name}
	cp := &compiledNP{policy: &netPolicy{ref: ref}, types: policyTypes(np)}
	p := cp.policy
	if cp.types[Ingress] {
		for _, r := range np.Spec.Ingress {
			p.rules[Ingress] = append(p.rules[Ingress], c.npRule(ref, np.Namespace, r.From, r.Ports))
		}
	}
	if cp.types[Egress] {
		for _, r := range np.Spec.Egress {
			p.rules[Egress] = append(p.rules[Egress], c.npRule(ref, np.Namespace, r.To, r.Ports))
		}
	}
	cp.subject = c.selector(ref, "podSelector", &np.Spec.PodSelector)
	cp.warnings = slices.Clone(c.snap.warnings[w0:])
	return cp
}

// reuseNetworkPolicy returns np as the previous compile left it, its rules
// interned in this compile's table, or nil when np was not compiled then.
func (c *compiler) reuseNetworkPolicy(np *networkingv1.NetworkPolicy) *compiledNP {
	prev := c.prevNPs[np]
	if prev == nil {
		return nil
	}
	c.snap.warnings = append(c.snap.warnings, prev.warnings...)
	p := &netPolicy{ref: prev.policy.ref}
	for d := range 2 {
		p.rules[d] = make([]*npRule, len(prev.policy.rules[d]))
		for i, r := range prev.policy.rules[d] {
			if shared := c.npRules[r.key]; shared != nil {
				r = shared
			} else {
				c.npRules[r.key] = r
			}
			p.rules[d][i] = r
		}
	}
	return &compiledNP{policy: p, subject: prev.subject, types: prev.types, warnings: prev.warnings}
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
	if shared := c.npRules[r.key]; shared != nil {
		return shared
	}
	c.npRules[r.key] = &r
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
