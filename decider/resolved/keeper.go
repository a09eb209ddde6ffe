package resolved

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/state"
)

// Keeper ties a Store to the decider's published state: what a pod
// learned is in force from a new generation on, which lists the pod as
// changed so that the queuer drops its cached verdicts, and so is an
// expiry.
type Keeper struct {
	store *Store
	state *state.State
	node  string
	now   func() time.Time

	mu       sync.Mutex
	snapshot *engine.Snapshot        // whose domain pods pods holds
	pods     map[netip.Addr]struct{} // the node's pods whose answers are learned
}

// NewKeeper returns a Keeper for the pods of node.
func NewKeeper(store *Store, st *state.State, node string) *Keeper {
	return &Keeper{store: store, state: st, node: node, now: time.Now}
}

// Store returns the Keeper's store.
func (k *Keeper) Store() *Store { return k.store }

// Learn records the answers pod received and returns the generation from
// which verdicts take them into account, or ok false when pod is not a pod
// of the node whose answers are learned (the answer is then ignored).
func (k *Keeper) Learn(pod netip.Addr, answers []Answer) (gen uint64, ok bool) {
	pod = pod.Unmap()
	v := k.state.Current()
	if v == nil || !k.learns(v.Snapshot, pod) {
		return 0, false
	}
	// Kept under the pod's primary address: it may connect from another.
	ips, _ := v.Snapshot.PodIPs(pod)
	if !k.store.Learn(ips[0], answers, k.now()) {
		return v.Generation, true
	}
	nv := k.state.PublishDNS(k.view(), ips)
	return nv.Generation, true
}

// learns reports whether the answers of pod are learned under snap: it is
// a pod of the node that an egress rule with a domainNames peer governs.
func (k *Keeper) learns(snap *engine.Snapshot, pod netip.Addr) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.snapshot != snap {
		k.snapshot, k.pods = snap, map[netip.Addr]struct{}{}
		for _, p := range snap.DomainPodIPs(k.node) {
			k.pods[p] = struct{}{}
		}
	}
	_, ok := k.pods[pod]
	return ok
}

// view is the store's view, with the pods of this node as the local ones.
func (k *Keeper) view() *view {
	local := func(pod netip.Addr) bool {
		v := k.state.Current()
		if v == nil {
			return false
		}
		node, ok := v.Snapshot.NodeOf(pod)
		return ok && node == k.node
	}
	key := func(pod netip.Addr) netip.Addr {
		if v := k.state.Current(); v != nil {
			if ips, ok := v.Snapshot.PodIPs(pod); ok {
				return ips[0]
			}
		}
		return pod
	}
	return k.store.View(local, key).(*view)
}

// Run expires answers every interval, and forgets the pods no longer
// governed by a domainNames rule of the node, publishing what changed,
// until ctx ends.
func (k *Keeper) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed := k.store.Expire(k.now())
		v := k.state.Current()
		if v != nil {
			changed = append(changed, k.store.Retain(func(p netip.Addr) bool { return k.learns(v.Snapshot, p) })...)
			// The store keys a pod by its primary address; the queuer must
			// hear of all of them.
			for _, p := range changed {
				if ips, ok := v.Snapshot.PodIPs(p); ok {
					changed = append(changed, ips...)
				}
			}
		}
		if len(changed) > 0 {
			if v := k.state.PublishDNS(k.view(), changed); v != nil {
				slog.Debug("DNS answers expired or forgotten", "pods", len(changed), "generation", v.Generation)
			}
		}
	}
}
