package engine

import (
	corev1 "k8s.io/api/core/v1"
)

// portSet is a compiled list of port clauses. The zero value (any=false, no
// entries) matches nothing; use anyPort for rules without ports.
type portSet struct {
	// any is set for rules without a port list: every port and protocol,
	// including ICMP, matches.
	any     bool
	entries []portEntry
}

// anyPort matches every connection, as a rule without ports does.
var anyPort = portSet{any: true}

// portEntry is one port clause: a protocol with a port range, or a named
// port resolved on the destination pod.
type portEntry struct {
	// proto is the protocol; ProtocolUnknown with a name means "whatever
	// protocol the named container port declares" (ANP namedPort, CNP
	// destinationNamedPort).
	proto  Protocol
	lo, hi uint16
	name   string
}

// matches reports whether a connection with proto and port to dstPod (nil
// when the destination is not a pod) matches the set. It narrows win to
// the ports around port that every clause it looked at treats as it
// treats port, so that the answer holds for all of win.
func (ps *portSet) matches(proto Protocol, port uint16, dstPod *pod, win *PortRange) bool {
	if ps.any {
		return true
	}
	if proto == ProtocolICMP {
		return false // ICMP has no ports: only rules without ports match it
	}
	for i := range ps.entries {
		e := &ps.entries[i]
		if e.name == "" {
			if e.proto != proto {
				continue
			}
			win.narrow(port, e.lo, e.hi)
			if port >= e.lo && port <= e.hi {
				return true
			}
			continue
		}
		if dstPod == nil {
			continue // named ports resolve on the destination pod only
		}
		for j := range dstPod.ports {
			cp := &dstPod.ports[j]
			if cp.name != e.name || cp.proto != proto || (e.proto != ProtocolUnknown && e.proto != proto) {
				continue
			}
			win.narrow(port, cp.port, cp.port)
			if cp.port == port {
				return true
			}
		}
	}
	return false
}

// narrow shrinks r, which contains port, to the ports on port's side of
// the clause [lo, hi]: inside it when port is, else between it and port.
func (r *PortRange) narrow(port, lo, hi uint16) {
	switch {
	case port < lo:
		r.Hi = min(r.Hi, lo-1)
	case port > hi:
		r.Lo = max(r.Lo, hi+1)
	default:
		r.Lo, r.Hi = max(r.Lo, lo), min(r.Hi, hi)
	}
}

// protocolOf converts an API protocol; nil or empty means TCP, as the API
// defaults it. ok is false for protocols the engine does not know.
func protocolOf(p *corev1.Protocol) (Protocol, bool) {
	if p == nil || *p == "" {
		return ProtocolTCP, true
	}
	switch *p {
	case corev1.ProtocolTCP:
		return ProtocolTCP, true
	case corev1.ProtocolUDP:
		return ProtocolUDP, true
	case corev1.ProtocolSCTP:
		return ProtocolSCTP, true
	}
	return ProtocolUnknown, false
}

// portRange validates an inclusive range of API port numbers.
func portRange(lo, hi int32) (uint16, uint16, bool) {
	if lo < 1 || hi > 65535 || lo > hi {
		return 0, 0, false
	}
	return uint16(lo), uint16(hi), true
}
