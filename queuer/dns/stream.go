package dns

import (
	"encoding/binary"
	"net/netip"
	"sync"
)

// Flow names the server side of one TCP connection: the DNS server's
// address and port, and the pod's.
type Flow struct {
	Server, Client         netip.Addr
	ServerPort, ClientPort uint16
}

// maxBuffered bounds what is kept of one connection: one message and its
// length prefix.
const maxBuffered = 2 + 65535

// Streams reassembles the DNS messages a server sends on TCP connections
// (each message is preceded by its length in two bytes), from the segments
// as the queuer sees them. It keeps at most a bounded number of
// connections, forgetting the least recently used. It is safe for
// concurrent use.
type Streams struct {
	mu    sync.Mutex
	max   int
	flows map[Flow]*stream
	clock uint64
	lost  uint64
}

type stream struct {
	next uint32 // the sequence number of the next byte expected
	buf  []byte
	used uint64
}

// NewStreams returns a reassembler for at most maxFlows connections.
func NewStreams(maxFlows int) *Streams {
	return &Streams{max: max(1, maxFlows), flows: map[Flow]*stream{}}
}

// Segment takes one segment of flow: its sequence number, payload and
// whether it ends the connection (FIN or RST). It returns the messages the
// segment completes, and whether bytes were lost (see Lost). The first data
// segment seen of a connection is taken to start a message; a
// retransmission of bytes already seen is ignored; after a gap the
// connection's partial message is dropped.
func (s *Streams) Segment(f Flow, seq uint32, payload []byte, end bool) (msgs [][]byte, lost bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.flows[f]
	if len(payload) > 0 {
		if st == nil {
			st = &stream{next: seq}
			s.evictLocked()
			s.flows[f] = st
		}
		s.clock++
		st.used = s.clock
		switch d := int32(seq - st.next); {
		case d > 0: // a gap: what is buffered can never complete
			s.lost++
			lost = true
			st.buf, st.next = st.buf[:0], seq
		case d < 0: // partly or wholly seen already
			if int(-d) >= len(payload) {
				payload = nil
			} else {
				payload = payload[-d:]
			}
		}
		st.buf = append(st.buf, payload...)
		st.next += uint32(len(payload))
	}
	if st != nil {
		for len(st.buf) >= 2 {
			n := int(binary.BigEndian.Uint16(st.buf))
			if len(st.buf) < 2+n {
				break
			}
			msgs = append(msgs, append([]byte(nil), st.buf[2:2+n]...))
			st.buf = st.buf[2+n:]
		}
		if len(st.buf) == 0 {
			st.buf = nil // let a large one go
		}
		if len(st.buf) > maxBuffered {
			s.lost++
			lost = true
			st.buf = nil
		}
	}
	if end {
		delete(s.flows, f)
	}
	return msgs, lost
}

// evictLocked makes room for one more connection. s.mu is held.
func (s *Streams) evictLocked() {
	if len(s.flows) < s.max {
		return
	}
	var oldest Flow
	var used uint64 = ^uint64(0)
	for f, st := range s.flows {
		if st.used < used {
			oldest, used = f, st.used
		}
	}
	delete(s.flows, oldest)
}

// Lost counts segments that could not be placed (a gap in the sequence, or
// a message too large): their messages were not learned.
func (s *Streams) Lost() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lost
}

// Len returns the number of connections kept.
func (s *Streams) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.flows)
}
