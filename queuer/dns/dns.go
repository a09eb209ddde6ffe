// Package dns reads what the queuer learns from the DNS answers on their
// way to a pod: which names resolved to which addresses, following CNAME
// chains, over UDP and over TCP (RFC 7766 framing, reassembled from the
// server's segments).
//
// Input comes from the network: the parser never panics, bounds every
// loop, and rejects what is not a well-formed answer (the queuer then lets
// the packet through unlearned and counts it).
package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/dns/dnsmessage"
)

// Resolution is one name chain of an answer: a question's name and the
// CNAMEs it led to, the A and AAAA addresses at its end, and the smallest
// TTL along the way, in seconds.
type Resolution struct {
	Names []string
	Addrs []netip.Addr
	TTL   uint32
}

// maxChain bounds the CNAME hops followed from one question.
const maxChain = 16

// ErrNotAnswer is returned for a message that is not a successful
// response.
var ErrNotAnswer = errors.New("dns: not a successful response")

// ParseAnswer reads one DNS message and returns the resolutions it
// carries: for each question, the chain of names that the answer section
// resolves it through and the addresses it ends at. Questions that end at
// no address give none. Names are normalized: lower case, no trailing dot.
func ParseAnswer(msg []byte) ([]Resolution, error) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil {
		return nil, fmt.Errorf("dns: header: %w", err)
	}
	if !h.Response || h.RCode != dnsmessage.RCodeSuccess {
		return nil, ErrNotAnswer
	}
	questions, err := p.AllQuestions()
	if err != nil {
		return nil, fmt.Errorf("dns: questions: %w", err)
	}
	type addrs struct {
		list []netip.Addr
		ttl  uint32
	}
	type cname struct {
		target string
		ttl    uint32
	}
	cnames := map[string]cname{}
	byName := map[string]*addrs{}
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dns: answer: %w", err)
		}
		name := normalize(rh.Name.String())
		if rh.Class != dnsmessage.ClassINET {
			if err := p.SkipAnswer(); err != nil {
				return nil, fmt.Errorf("dns: answer: %w", err)
			}
			continue
		}
		var addr netip.Addr
		switch rh.Type {
		case dnsmessage.TypeA:
			r, err := p.AResource()
			if err != nil {
				return nil, fmt.Errorf("dns: A record: %w", err)
			}
			addr = netip.AddrFrom4(r.A)
		case dnsmessage.TypeAAAA:
			r, err := p.AAAAResource()
			if err != nil {
				return nil, fmt.Errorf("dns: AAAA record: %w", err)
			}
			addr = netip.AddrFrom16(r.AAAA).Unmap()
		case dnsmessage.TypeCNAME:
			r, err := p.CNAMEResource()
			if err != nil {
				return nil, fmt.Errorf("dns: CNAME record: %w", err)
			}
			cnames[name] = cname{target: normalize(r.CNAME.String()), ttl: rh.TTL}
			continue
		default:
			if err := p.SkipAnswer(); err != nil {
				return nil, fmt.Errorf("dns: answer: %w", err)
			}
			continue
		}
		a := byName[name]
		if a == nil {
			a = &addrs{ttl: rh.TTL}
			byName[name] = a
		}
		a.list = append(a.list, addr)
		a.ttl = min(a.ttl, rh.TTL)
	}
	var out []Resolution
	for _, q := range questions {
		if q.Class != dnsmessage.ClassINET {
			continue
		}
		name := normalize(q.Name.String())
		r := Resolution{Names: []string{name}, TTL: ^uint32(0)}
		for range maxChain {
			if a := byName[name]; a != nil {
				r.Addrs = append(r.Addrs, a.list...)
				r.TTL = min(r.TTL, a.ttl)
			}
			c, ok := cnames[name]
			if !ok || slices.Contains(r.Names, c.target) {
				break // the end of the chain, or a loop
			}
			r.TTL = min(r.TTL, c.ttl)
			name = c.target
			r.Names = append(r.Names, name)
		}
		if len(r.Addrs) > 0 {
			out = append(out, r)
		}
	}
	return out, nil
}

// normalize lowercases a name and drops its trailing dot.
func normalize(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}
