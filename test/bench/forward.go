package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/tollgate/tollgate/test/netsim"
)

// Forwarder listens inside a network namespace and relays every connection
// to a backend address of the benchmark's own namespace. Agents that run
// in a node namespace (kube-network-policies' is host-network in a real
// cluster) reach the apiserver on the host's loopback through it.
type Forwarder struct {
	l       net.Listener
	backend string
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
}

// Forward listens on listen (host:port) inside ns and relays to backend.
func Forward(ns, listen, backend string) (*Forwarder, error) {
	var l net.Listener
	err := netsim.RunInNS(ns, func() (err error) {
		l, err = net.Listen("tcp", listen)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("forwarder in %s: %w", ns, err)
	}
	f := &Forwarder{l: l, backend: backend, conns: map[net.Conn]struct{}{}}
	f.wg.Go(f.serve)
	return f, nil
}

// Addr is the listening address inside the namespace.
func (f *Forwarder) Addr() string { return f.l.Addr().String() }

func (f *Forwarder) serve() {
	for {
		c, err := f.l.Accept()
		if err != nil {
			return
		}
		f.wg.Go(func() { f.relay(c) })
	}
}

// relay copies both ways until either side closes.
func (f *Forwarder) relay(c net.Conn) {
	b, err := net.DialTimeout("tcp", f.backend, 5*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !f.track(c, b) {
		return
	}
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(b, c)
	go pipe(c, b)
	<-done
	c.Close()
	b.Close()
	<-done
	f.untrack(c, b)
}

// track records open connections so that Close can end them; it refuses
// (and closes them) once Close has begun.
func (f *Forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *Forwarder) untrack(cs ...net.Conn) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range cs {
		delete(f.conns, c)
	}
}

// Close stops listening, cuts every relayed connection and waits.
func (f *Forwarder) Close() error {
	err := f.l.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
