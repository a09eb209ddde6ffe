package engine

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// nsRecord is one namespace's compiled pods and what they were compiled
// from. A Compiler reuses it as a whole when a later input gives the
// namespace the same inputs.
type nsRecord struct {
	// The inputs: the namespace, its pods and NetworkPolicies by name, and
	// the cluster-scoped policies that apply to it (appliesTo), per stage in
	// evaluation order.
	ns              *namespace
	in              []*corev1.Pod
	nps             []*compiled
	admin, baseline []*clusterPolicy
	// pods are the pods that take part in policy, by name.
	pods []*pod
	// The policies that select some pod of the namespace in some direction
	// (NetworkPolicies by name), and how many of its pods some policy
	// selects.
	selectingNPs     []*netPolicy
	selectingCluster []*clusterPolicy
	selected         int
}

// sameInputs reports whether r was compiled from the inputs of o.
func (r *nsRecord) sameInputs(o *nsRecord) bool {
	return r.ns == o.ns && slices.Equal(r.in, o.in) && slices.Equal(r.nps, o.nps) &&
		slices.Equal(r.admin, o.admin) && slices.Equal(r.baseline, o.baseline)
}

// buckets is what byNamespace keeps from one compile to the next for one
// kind of object: the previous compile's buckets, and where each of their
// objects was filed. A Compiler resets it with everything else when the
// namespace names change, so a namespace index means the same namespace
// for as long as it lives.
type buckets[T object] struct {
	prev   [][]T
	placed map[T]*placement
	gen    uint64 // counts byNamespace calls
}

// placement is where an object of the previous compile's input was filed:
// its namespace index, and the byNamespace call that last met it (to catch
// an object given twice).
type placement struct {
	ns  int
	met uint64
}

// byNamespace sorts objs into buckets by namespace index, each by name. A
// namespace whose objects are the previous compile's, as a set, gets
// bk.prev's bucket back without being sorted again; so does one whose
// sorted objects are the same, in order. It records the result in bk for
// the next compile.
func byNamespace[T object](c *compiler, objs []T, bk *buckets[T]) [][]T {
	type named struct {
		name string
		obj  T
	}
	bk.gen++
	if bk.placed == nil {
		bk.placed = make(map[T]*placement, len(objs))
	}
	n := len(c.namespaces)
	// same[i]: every object of namespace i so far was in its previous bucket
	// and met once.
	same := make([]bool, n)
	for i := range min(n, len(bk.prev)) {
		same[i] = true
	}
	index := make([]int, len(objs))
	start := make([]int, n+1)
	for j, o := range objs {
		if p := bk.placed[o]; p != nil && p.met != bk.gen {
			p.met = bk.gen
			index[j] = p.ns
		} else {
			index[j] = c.nsByName[o.GetNamespace()].index
			same[index[j]] = false
		}
		start[index[j]+1]++
	}
	for i := range n {
		if same[i] && start[i+1] != len(bk.prev[i]) {
			same[i] = false // an object of the previous bucket is gone
		}
		start[i+1] += start[i]
	}
	all := make([]named, len(objs))
	next := slices.Clone(start)
	for j, o := range objs {
		if i := index[j]; !same[i] {
			all[next[i]] = named{o.GetName(), o}
			next[i]++
		}
	}
	out := make([][]T, n)
	for i := range out {
		if same[i] {
			out[i] = bk.prev[i]
			continue
		}
		b := all[start[i]:next[i]]
		slices.SortFunc(b, func(x, y named) int { return strings.Compare(x.name, y.name) })
		if i < len(bk.prev) && slices.EqualFunc(b, bk.prev[i], func(n named, o T) bool { return n.obj == o }) {
			out[i] = bk.prev[i]
			continue
		}
		out[i] = make([]T, len(b))
		for j, x := range b {
			out[i][j] = x.obj
		}
	}
	// Refile the objects of the namespaces that changed: forget those of
	// the previous bucket first, as some of them may be gone.
	for i := range out {
		if i < len(bk.prev) && sameSlice(out[i], bk.prev[i]) {
			continue
		}
		if i < len(bk.prev) {
			for _, o := range bk.prev[i] {
				delete(bk.placed, o)
			}
		}
		ps := make([]placement, len(out[i])) // one allocation a bucket
		for j, o := range out[i] {
			ps[j] = placement{ns: i, met: bk.gen}
			bk.placed[o] = &ps[j]
		}
	}
	bk.prev = out
	return out
}

// sameSlice reports whether a and b are the same slice: same array, same
// length.
func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// addPods compiles every namespace's pods, reusing the previous compile's
// record of a namespace whose inputs are the same, and indexes them.
func (c *compiler) addPods(pods []*corev1.Pod, nps [][]*compiled, admin, baseline []*clusterPolicy) []*nsRecord {
	byNS := byNamespace(c, pods, &c.cc.pods)
	records := make([]*nsRecord, len(c.namespaces))
	n := 0
	for i, ns := range c.namespaces {
		r := &nsRecord{ns: ns, in: byNS[i], nps: nps[i]}
		for _, cp := range admin {
			if cp.appliesTo(ns) {
				r.admin = append(r.admin, cp)
			}
		}
		for _, cp := range baseline {
			if cp.appliesTo(ns) {
				r.baseline = append(r.baseline, cp)
			}
		}
		if i < len(c.cc.records) && c.cc.records[i].sameInputs(r) {
			r = c.cc.records[i]
		} else {
			c.compileNamespace(r)
		}
		records[i] = r
		n += len(r.pods)
	}
	c.snap.pods = make([]*pod, 0, n)
	for _, r := range records {
		c.snap.pods = append(c.snap.pods, r.pods...)
		c.snap.stats.SelectedPods += r.selected
	}
	c.indexAddresses(records)
	return records
}

// indexAddresses fills the snapshot's podByIP. When no two pods claimed an
// address in the previous compile, it copies the previous index and
// refiles only the pods of the namespaces whose records changed; it builds
// the index afresh when that would meet a claimed address, so that a
// conflict is settled and reported as a fresh build does.
func (c *compiler) indexAddresses(records []*nsRecord) {
	cc := c.cc
	if cc.podByIP != nil && len(records) == len(cc.records) {
		m := maps.Clone(cc.podByIP)
		for i, old := range cc.records {
			if records[i] == old {
				continue
			}
			for _, pd := range old.pods {
				for _, ip := range pd.ips {
					if m[ip] == pd {
						delete(m, ip)
					}
				}
			}
		}
		clean := true
	refile:
		for i, r := range records {
			if r == cc.records[i] {
				continue
			}
			for _, pd := range r.pods {
				for _, ip := range pd.ips {
					if m[ip] != nil {
						clean = false
						break refile
					}
					m[ip] = pd
				}
			}
		}
		if clean {
			c.snap.podByIP, cc.podByIP = m, m
			return
		}
	}
	m := make(map[netip.Addr]*pod, len(c.snap.pods))
	clean := true
	for _, pd := range c.snap.pods {
		for _, ip := range pd.ips {
			old := m[ip]
			if old == nil {
				m[ip] = pd
				continue
			}
			// Two live pods claim one IP: one of them is stale. Prefer the
			// one that is not terminating; otherwise the first by name.
			clean = false
			c.warnf("pods %s/%s and %s/%s both have IP %s", old.ref.Namespace, old.ref.Name, pd.ref.Namespace, pd.ref.Name, ip)
			if old.terminating && !pd.terminating {
				m[ip] = pd
			}
		}
	}
	c.snap.podByIP = m
	cc.podByIP = nil
	if clean {
		cc.podByIP = m
	}
}

// compileNamespace compiles the pods of r's namespace that take part in
// policy: not host-network (their IP is the node's), not finished
// (Succeeded and Failed pods' IPs are reused), and with an IP. Terminating
// pods still count until they are gone. Pods with the same labels are
// selected by the same policies: the work is done once for each label set,
// on the first pod that carries it, and the others share its lists.
func (c *compiler) compileNamespace(r *nsRecord) {
	var firsts []*pod                     // the first pod of each label set
	byHash := make(map[uint64]*pod)       // a first pod by labelsHash
	firstOf := make([]*pod, 0, len(r.in)) // by index in r.pods
	for _, p := range r.in {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		ips := podIPs(p)
		if len(ips) == 0 {
			continue
		}
		pd := &pod{
			ref:         PodRef{Namespace: p.Namespace, Name: p.Name},
			labels:      p.Labels,
			ns:          r.ns,
			node:        p.Spec.NodeName,
			ips:         ips,
			ports:       containerPorts(p),
			terminating: p.DeletionTimestamp != nil,
		}
		r.pods = append(r.pods, pd)
		h := labelsHash(p.Labels)
		f := byHash[h]
		if f != nil && !maps.Equal(f.labels, pd.labels) { // two label sets, one hash
			f = nil
			if i := slices.IndexFunc(firsts, func(f *pod) bool { return maps.Equal(f.labels, pd.labels) }); i >= 0 {
				f = firsts[i]
			}
		}
		if f == nil {
			f = pd
			firsts = append(firsts, pd)
			if byHash[h] == nil {
				byHash[h] = pd
			}
		}
		firstOf = append(firstOf, f)
	}

	// NetworkPolicies: a namespace with many label sets and several
	// policies gets a label index, so that a policy's podSelector looks
	// only at the pods that can match.
	var index labelIndex
	if len(r.nps) >= 4 && len(firsts) >= 32 {
		index = newLabelIndex(firsts)
	}
	for _, np := range r.nps {
		selects := false
		index.forEachMatch(firsts, np.subject, func(pd *pod) {
			for d := Egress; d <= Ingress; d++ {
				if np.types[d] {
					pd.np[d] = append(pd.np[d], np.np)
					selects = true
				}
			}
		})
		if selects {
			r.selectingNPs = append(r.selectingNPs, np.np)
		}
	}
	// Cluster-scoped policies, into the admin or baseline lists.
	attach := func(policies []*clusterPolicy, lists func(*pod) *[2][]*clusterPolicy) {
		for _, cp := range policies {
			selects := false
			for _, pd := range firsts {
				if cp.subject.pods != nil && !cp.subject.pods.matches(pd.labels) {
					continue
				}
				selects = true
				l := lists(pd)
				for d := Egress; d <= Ingress; d++ {
					if len(cp.rules[d]) > 0 {
						l[d] = append(l[d], cp)
					}
				}
			}
			if selects {
				r.selectingCluster = append(r.selectingCluster, cp)
			}
		}
	}
	attach(r.admin, func(pd *pod) *[2][]*clusterPolicy { return &pd.admin })
	attach(r.baseline, func(pd *pod) *[2][]*clusterPolicy { return &pd.baseline })
	flattenRules(firsts)

	for i, pd := range r.pods {
		if f := firstOf[i]; f != pd {
			pd.admin, pd.np, pd.baseline, pd.npRules = f.admin, f.np, f.baseline, f.npRules
		}
		if pd.selected() {
			r.selected++
		}
	}
}

// flattenRules sets each pod's npRules from its NetworkPolicies, keeping
// the first of identical rules.
func flattenRules(pods []*pod) {
	seen := make(map[*npRule]bool)
	var scratch []npRuleRef
	for _, pd := range pods {
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

// labelsHash hashes a label set whatever the order in which the map yields
// it: the sum of the FNV-1a hashes of its pairs.
func labelsHash(labels map[string]string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	var sum uint64
	for k, v := range labels {
		h := uint64(offset)
		for i := range len(k) {
			h = (h ^ uint64(k[i])) * prime
		}
		h = (h ^ 0xff) * prime // no label key or value holds this byte
		for i := range len(v) {
			h = (h ^ uint64(v[i])) * prime
		}
		sum += h
	}
	return sum
}

// numberPolicies gives every policy that selects a pod its id (see
// PolicyIDs). Ids follow the order of kind, namespace and name, so that the
// same policies get the same ids whatever the input order. The records list
// NetworkPolicies by namespace and name already, and their kind sorts after
// the cluster-scoped kinds.
func (c *compiler) numberPolicies(records []*nsRecord) {
	s := c.snap
	seen := make([]bool, c.cc.nextSlot)
	var cluster []*clusterPolicy
	nps := 0
	for _, r := range records {
		for _, cp := range r.selectingCluster {
			if !seen[cp.slot] {
				seen[cp.slot] = true
				cluster = append(cluster, cp)
			}
		}
		nps += len(r.selectingNPs)
	}
	slices.SortFunc(cluster, func(a, b *clusterPolicy) int { return a.ref.compare(b.ref) })
	s.ids = make([]uint32, c.cc.nextSlot)
	s.policies = make([]PolicyInfo, 0, len(cluster)+nps)
	for _, cp := range cluster {
		s.policies = append(s.policies, PolicyInfo{cp.ref, cp.tier})
		s.ids[cp.slot] = uint32(len(s.policies))
	}
	for _, r := range records {
		for _, np := range r.selectingNPs {
			s.policies = append(s.policies, PolicyInfo{np.ref, TierNetworkPolicy})
			s.ids[np.slot] = uint32(len(s.policies))
		}
	}
}

// compare orders refs by kind, namespace and name.
func (p PolicyRef) compare(o PolicyRef) int {
	return cmp.Or(strings.Compare(p.Kind, o.Kind), strings.Compare(p.Namespace, o.Namespace), strings.Compare(p.Name, o.Name))
}
