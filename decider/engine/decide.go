package engine

// Decide evaluates both directions of a connection: egress of the source
// when it is a known pod, ingress of the destination when it is a known pod.
// The connection passes only if every evaluated direction allows it.
// Decide does not allocate.
func (s *Snapshot) Decide(t Tuple) Decision {
	t.Src, t.Dst = t.Src.Unmap(), t.Dst.Unmap()
	src, dst := s.podByIP[t.Src], s.podByIP[t.Dst]
	d := Decision{Allowed: true}
	if t.Src == t.Dst && !t.ViaService {
		// A pod talking to its own IP is not subject to policy.
		d.SamePod = src != nil
		return d
	}
	if src != nil {
		d.Egress = s.evaluate(Egress, src, endpoint{ip: t.Dst, pod: dst}, t, dst)
		d.Allowed = d.Egress.Allowed
	}
	if dst != nil {
		d.Ingress = s.evaluate(Ingress, dst, endpoint{ip: t.Src, pod: src}, t, dst)
		d.Allowed = d.Allowed && d.Ingress.Allowed
	}
	return d
}

// evaluate runs the tiers for one direction of subject: admin tier, then
// NetworkPolicy, then baseline tier, then the default allow.
func (s *Snapshot) evaluate(dir Direction, subject *pod, peer endpoint, t Tuple, dstPod *pod) Explanation {
	e := Explanation{Evaluated: true, Direction: dir, Pod: subject.ref, Rule: -1, PassRule: -1}

	// Admin tier: first matching rule of the policies in priority order.
	// Allow and Deny are final; Pass skips the rest of the tier.
	if p, r := s.firstMatch(subject.admin[dir], dir, peer, t, dstPod); r != nil {
		if r.action != ActionPass {
			return e.decided(p.tier, p.ref, r.index, r.name, r.action)
		}
		e.Passed, e.PassPolicy, e.PassRule = true, p.ref, r.index
	}

	// NetworkPolicy: once any policy isolates the pod in this direction, only
	// what some rule of those policies allows passes.
	if nps := subject.np[dir]; len(nps) > 0 {
		rules := subject.npRules[dir]
		for i := range rules {
			r := &rules[i]
			if r.rule.ports.matches(t.Proto, t.DstPort, dstPod) && r.rule.peerMatches(peer) {
				return e.decided(TierNetworkPolicy, r.policy.ref, r.index, "", ActionAllow)
			}
		}
		return e.decided(TierNetworkPolicy, nps[0].ref, -1, "", ActionDeny)
	}

	// Baseline tier. A Pass here leaves the decision to the default.
	if p, r := s.firstMatch(subject.baseline[dir], dir, peer, t, dstPod); r != nil {
		if r.action != ActionPass {
			return e.decided(p.tier, p.ref, r.index, r.name, r.action)
		}
		e.Passed, e.PassPolicy, e.PassRule = true, p.ref, r.index
	}
	return e.decided(TierDefault, PolicyRef{}, -1, "", ActionAllow)
}

// firstMatch returns the first rule, in policy order then rule order, that
// matches the connection.
func (s *Snapshot) firstMatch(policies []*clusterPolicy, dir Direction, peer endpoint, t Tuple, dstPod *pod) (*clusterPolicy, *clusterRule) {
	for _, p := range policies {
		for i := range p.rules[dir] {
			if r := &p.rules[dir][i]; s.ruleMatches(r, peer, t, dstPod) {
				return p, r
			}
		}
	}
	return nil, nil
}

func (e Explanation) decided(tier Tier, ref PolicyRef, rule int, name string, a Action) Explanation {
	e.Tier, e.Policy, e.Rule, e.RuleName, e.Action = tier, ref, rule, name, a
	e.Allowed = a == ActionAllow
	return e
}

func (s *Snapshot) ruleMatches(r *clusterRule, peer endpoint, t Tuple, dstPod *pod) bool {
	if r.all {
		return true
	}
	if !r.ports.matches(t.Proto, t.DstPort, dstPod) {
		return false
	}
	for i := range r.peers {
		if s.peerMatches(&r.peers[i], peer) {
			return true
		}
	}
	return false
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
