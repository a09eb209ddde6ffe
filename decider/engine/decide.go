package engine

// Decide evaluates both directions of a connection: egress of the source
// when it is a known pod, ingress of the destination when it is a known pod.
// The connection passes only if every evaluated direction allows it.
// Decide does not allocate.
func (s *Snapshot) Decide(t Tuple) Decision { return s.decide(t, nil) }

// PolicyIDs numbers the policies behind a Decision within its snapshot:
// Snapshot.Policies()[id-1] names the policy; 0 means none. Ids are local to
// one snapshot; callers that keep something per policy (metrics) index by
// them instead of hashing names.
type PolicyIDs struct {
	// Policy and Pass hold, per Direction, the ids of the explanation's
	// Policy and PassPolicy.
	Policy, Pass [2]uint32
}

// DecideIDs is Decide, also returning the ids of the deciding and passing
// policies. It does not allocate.
func (s *Snapshot) DecideIDs(t Tuple) (Decision, PolicyIDs) {
	w := [2]walk{{ids: s.ids}, {ids: s.ids}}
	d := s.decide(t, &w)
	return d, PolicyIDs{Policy: [2]uint32{w[Egress].id, w[Ingress].id}, Pass: [2]uint32{w[Egress].passID, w[Ingress].passID}}
}

// walk records, for DecideIDs and Trace, what Decide alone does not return:
// the ids of the policies that decided and passed, and (when trace is set)
// every stage visited.
type walk struct {
	id, passID uint32
	ids        []uint32 // the snapshot's policy ids, by slot
	trace      bool
	steps      []Step
}

// decide is Decide, recording into w (one walk per Direction) when it is not
// nil. Decide passes nil, which costs a comparison per tier.
func (s *Snapshot) decide(t Tuple, w *[2]walk) Decision {
	t.Src, t.Dst = t.Src.Unmap(), t.Dst.Unmap()
	src, dst := s.podByIP[t.Src], s.podByIP[t.Dst]
	d := Decision{Allowed: true, Ports: PortRange{0, 65535}}
	if t.Src == t.Dst && !t.ViaService {
		// A pod talking to its own IP is not subject to policy.
		d.SamePod = src != nil
		return d
	}
	var eg, in *walk
	if w != nil {
		eg, in = &w[Egress], &w[Ingress]
	}
	if src != nil {
		d.Egress = s.evaluate(Egress, src, endpoint{ip: t.Dst, pod: dst}, t, dst, eg, &d.Ports)
		d.Allowed = d.Egress.Allowed
	}
	if dst != nil {
		d.Ingress = s.evaluate(Ingress, dst, endpoint{ip: t.Src, pod: src}, t, dst, in, &d.Ports)
		d.Allowed = d.Allowed && d.Ingress.Allowed
	}
	return d
}

// evaluate runs the tiers for one direction of subject: admin tier, then
// NetworkPolicy, then baseline tier, then the default allow. w, when not
// nil, receives the policy ids and, if w.trace, every stage visited. Every
// port clause it looks at narrows win (see portSet.matches).
func (s *Snapshot) evaluate(dir Direction, subject *pod, peer endpoint, t Tuple, dstPod *pod, w *walk, win *PortRange) Explanation {
	e := Explanation{Evaluated: true, Direction: dir, Pod: subject.ref, Rule: -1, PassRule: -1}

	// Admin tier: first matching rule of the policies in priority order.
	// Allow and Deny are final; Pass skips the rest of the tier.
	admin := subject.admin[dir]
	p, r, domain := s.firstMatch(admin, dir, peer, t, dstPod, win)
	if w != nil {
		w.clusterStep(StageAdmin, admin, p, r)
	}
	if r != nil {
		if r.action != ActionPass {
			e = e.decided(p.tier, p.ref, r.index, r.name, r.action)
			e.Domain = domain
			return e
		}
		e.Passed, e.PassPolicy, e.PassRule = true, p.ref, r.index
	}

	// NetworkPolicy: once any policy isolates the pod in this direction, only
	// what some rule of those policies allows passes.
	if nps := subject.np[dir]; len(nps) > 0 {
		rules := subject.npRules[dir]
		for i := range rules {
			r := &rules[i]
			if r.rule.ports.matches(t.Proto, t.DstPort, dstPod, win) && r.rule.peerMatches(peer) {
				e = e.decided(TierNetworkPolicy, r.policy.ref, r.index, "", ActionAllow)
				if w != nil {
					w.npStep(nps, r.policy, e)
				}
				return e
			}
		}
		e = e.decided(TierNetworkPolicy, nps[0].ref, -1, "", ActionDeny)
		if w != nil {
			w.npStep(nps, nps[0], e)
		}
		return e
	}
	if w != nil {
		w.npStep(nil, nil, e)
	}

	// Baseline tier. A Pass here leaves the decision to the default.
	baseline := subject.baseline[dir]
	p, r, domain = s.firstMatch(baseline, dir, peer, t, dstPod, win)
	if w != nil {
		w.clusterStep(StageBaseline, baseline, p, r)
	}
	if r != nil {
		if r.action != ActionPass {
			e = e.decided(p.tier, p.ref, r.index, r.name, r.action)
			e.Domain = domain
			return e
		}
		e.Passed, e.PassPolicy, e.PassRule = true, p.ref, r.index
	}
	e = e.decided(TierDefault, PolicyRef{}, -1, "", ActionAllow)
	if w != nil {
		w.defaultStep()
	}
	return e
}

// firstMatch returns the first rule, in policy order then rule order, that
// matches the connection, and the domain name by which it matched (if a
// domainNames peer did).
func (s *Snapshot) firstMatch(policies []*clusterPolicy, dir Direction, peer endpoint, t Tuple, dstPod *pod, win *PortRange) (*clusterPolicy, *clusterRule, string) {
	for _, p := range policies {
		for i := range p.rules[dir] {
			r := &p.rules[dir][i]
			if ok, domain := s.ruleMatches(r, peer, t, dstPod, win); ok {
				return p, r, domain
			}
		}
	}
	return nil, nil, ""
}

func (e Explanation) decided(tier Tier, ref PolicyRef, rule int, name string, a Action) Explanation {
	e.Tier, e.Policy, e.Rule, e.RuleName, e.Action = tier, ref, rule, name, a
	e.Allowed = a == ActionAllow
	return e
}

// ruleMatches reports whether r matches the connection and, for a
// domainNames peer, the name by which it did.
func (s *Snapshot) ruleMatches(r *clusterRule, peer endpoint, t Tuple, dstPod *pod, win *PortRange) (bool, string) {
	if r.all {
		return true, ""
	}
	if !r.ports.matches(t.Proto, t.DstPort, dstPod, win) {
		return false, ""
	}
	for i := range r.peers {
		p := &r.peers[i]
		if p.kind == peerDomains {
			if name, ok := matchDomain(p.domains, t.DNS, t.Src, peer.ip); ok {
				return true, name
			}
			continue
		}
		if s.peerMatches(p, peer) {
			return true, ""
		}
	}
	return false, ""
}

func (r *npRule) peerMatches(peer endpoint) bool {
	if r.allPeers {
		return true
	}
	for i := range r.peers {
		if r.peers[i].matches(peer) {
			return true
		}
	}
	return false
}
