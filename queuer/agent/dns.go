package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/fnv"
	"net/netip"
	"time"

	"github.com/tollgate/tollgate/queuer/client"
	"github.com/tollgate/tollgate/queuer/dns"
	"github.com/tollgate/tollgate/queuer/nfq"
	"github.com/tollgate/tollgate/queuer/packet"
)

// Results of a DNS answer (label "result" of tollgate_dns_answers_total).
const (
	dnsLearned      = "learned"       // reported and in force before the answer went on
	dnsNoAddress    = "no-address"    // a valid answer without A or AAAA records
	dnsUnparsable   = "unparsable"    // not a DNS answer (or not a whole one)
	dnsTCPLost      = "tcp-lost"      // TCP bytes missing: the message cannot be read
	dnsLearnFailed  = "learn-failed"  // the decider could not be told
	dnsApplyTimeout = "apply-timeout" // told, but its generation was not in force in time
)

// dnsLearnTimeout bounds how long an answer waits for the decider and for
// the generation that takes it into account.
const dnsLearnTimeout = 500 * time.Millisecond

// HandleDNS reads a DNS answer on its way to a pod, reports what it
// resolved to the decider and lets the answer on once the decider's verdicts
// take it into account: the pod's first connection after the lookup then
// already matches. It is the handler of the DNS queue and always lets the
// packet through: an answer that cannot be read or learned goes on
// unlearned, and is counted.
func (a *Agent) HandleDNS(p nfq.Packet) nfq.Verdict {
	if result := a.learnDNS(p); result != "" {
		a.metrics.dnsAnswers.WithLabelValues(result).Inc()
	}
	return accept
}

// learnDNS does HandleDNS's work and says how it went.
func (a *Agent) learnDNS(p nfq.Packet) string {
	info, err := packet.Parse(p.Payload)
	if err != nil || info.Fragment || info.SrcPort != 53 {
		return dnsUnparsable
	}
	l4 := p.Payload[info.Transport:]
	var msgs [][]byte
	switch info.Proto {
	case packet.ProtoUDP:
		msgs = [][]byte{l4[8:]}
	case packet.ProtoTCP:
		off := int(l4[12]>>4) * 4
		if off < 20 || off > len(l4) {
			return dnsUnparsable
		}
		const fin, rst = 0x01, 0x04
		f := dns.Flow{Server: info.Src, Client: info.Dst, ServerPort: info.SrcPort, ClientPort: info.DstPort}
		var lost bool
		msgs, lost = a.streams.Segment(f, binary.BigEndian.Uint32(l4[4:8]), l4[off:], l4[13]&(fin|rst) != 0)
		if lost {
			return dnsTCPLost
		}
		if len(msgs) == 0 {
			return "" // a part of a message, or a bare ACK: nothing to say
		}
	default:
		return dnsUnparsable
	}
	var rs []client.Resolution
	for _, m := range msgs {
		res, err := dns.ParseAnswer(m)
		if errors.Is(err, dns.ErrNotAnswer) {
			continue
		}
		if err != nil {
			return dnsUnparsable
		}
		for _, r := range res {
			rs = append(rs, client.Resolution{Names: r.Names, Addrs: r.Addrs, TTL: r.TTL})
		}
	}
	if len(rs) == 0 {
		return dnsNoAddress
	}
	ctx, cancel := context.WithTimeout(context.Background(), dnsLearnTimeout)
	defer cancel()
	gen, err := a.dec.Learn(ctx, info.Dst, rs)
	if err != nil {
		return dnsLearnFailed
	}
	if !a.waitApplied(ctx, gen) {
		return dnsApplyTimeout
	}
	return dnsLearned
}

// waitApplied waits until generation gen is in force (its announcement
// applied to the dataplane and both cache tiers), or ctx ends.
func (a *Agent) waitApplied(ctx context.Context, gen uint64) bool {
	for {
		a.wmu.Lock()
		done, applied := a.appliedGen >= gen && a.watched.Load(), a.applied
		a.wmu.Unlock()
		if done {
			return true
		}
		select {
		case <-applied:
		case <-ctx.Done():
			return false
		}
	}
}

// DNSShard is the nfq.Config.Shard of the DNS queue: the segments of one
// TCP connection go to one worker, in order. Read concurrently, a message's
// second segment could be reassembled before its first (and the message
// lost), and a retransmission of a segment held while its answer is
// learned could reach the pod before the original is let on.
func DNSShard(p nfq.Packet) uint32 {
	info, err := packet.Parse(p.Payload)
	if err != nil {
		return 0
	}
	h := fnv.New32a()
	for _, a := range []netip.Addr{info.Src, info.Dst} {
		b := a.As16()
		h.Write(b[:])
	}
	var ports [4]byte
	binary.BigEndian.PutUint16(ports[:2], info.SrcPort)
	binary.BigEndian.PutUint16(ports[2:], info.DstPort)
	h.Write(ports[:])
	return h.Sum32()
}
