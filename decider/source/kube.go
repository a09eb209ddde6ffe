package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	coreinformers "k8s.io/client-go/informers/core/v1"
	networkinginformers "k8s.io/client-go/informers/networking/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"sigs.k8s.io/network-policy-api/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/apis/v1alpha2"
	policyclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	v1alpha1informers "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions/apis/v1alpha1"
	v1alpha2informers "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions/apis/v1alpha2"

	"github.com/tollgate/tollgate/decider/engine"
)

// DefaultCRDCheckInterval is how often the Kube source asks discovery which
// network-policy-api kinds are served, unless KubeOptions says otherwise.
const DefaultCRDCheckInterval = 30 * time.Second

// KubeOptions tune the Kube source.
type KubeOptions struct {
	// CRDCheckInterval is how often discovery is asked which
	// network-policy-api kinds (AdminNetworkPolicy,
	// BaselineAdminNetworkPolicy, ClusterNetworkPolicy) are served. It also
	// bounds the wait between retries when discovery fails at start-up.
	// Zero means DefaultCRDCheckInterval.
	CRDCheckInterval time.Duration
	// Logger receives the source's logs; nil means slog.Default().
	Logger *slog.Logger
}

// resourceDiscovery is the part of discovery.DiscoveryInterface that the
// Kube source uses.
type resourceDiscovery interface {
	ServerResourcesForGroupVersion(groupVersion string) (*metav1.APIResourceList, error)
}

// Kube watches a Kubernetes API server with shared informers: Pods,
// Namespaces, Nodes and NetworkPolicies always, and each of
// AdminNetworkPolicy, BaselineAdminNetworkPolicy (v1alpha1) and
// ClusterNetworkPolicy (v1alpha2) while the server serves it.
//
// Objects are stripped to what the engine reads before they enter the
// caches. Kube relies on the API server's defaulting (including the
// kubernetes.io/metadata.name label on namespaces).
type Kube struct {
	log      *slog.Logger
	interval time.Duration
	disc     resourceDiscovery
	// canWatch, when set, asks the API server whether this client may list
	// and watch a resource; kinds it may not watch are run without, like
	// kinds that are not served (an install flavour without their RBAC).
	canWatch func(ctx context.Context, groupVersion, resource string) (bool, error)

	pods, namespaces, nodes, networkPolicies cache.SharedIndexInformer
	crds                                     []*crdKind

	mu         sync.Mutex
	started    bool
	discovered bool // the first discovery succeeded
	synced     bool // the initial sync completed
	handler    cache.ResourceEventHandler
	changed    func()
}

// crdKind is one network-policy-api kind that may or may not be served.
type crdKind struct {
	kind         string // for logs: "AdminNetworkPolicy"
	groupVersion string
	resource     string // plural, as discovery lists it
	newInformer  func() cache.SharedIndexInformer
	// addTo appends the informer's objects to an Input.
	addTo func(in *engine.Input, objs []any)

	// Guarded by Kube.mu.
	informer cache.SharedIndexInformer // nil while the kind is not watched
	stop     context.CancelFunc
	// missingLogged is true once "not served" was logged, so it is said
	// once rather than at every check.
	missingLogged bool
	// forbiddenLogged is the same for "served but not permitted".
	forbiddenLogged bool
}

// NewKube returns a source that watches the API server cfg points to. Core
// kinds are requested as protobuf; the network-policy-api kinds (custom
// resources) as JSON.
func NewKube(cfg *rest.Config, opts KubeOptions) (*Kube, error) {
	kcfg := rest.CopyConfig(cfg)
	kcfg.ContentType = runtime.ContentTypeProtobuf
	kcfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	kc, err := kubernetes.NewForConfig(kcfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	pc, err := policyclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("network-policy-api client: %w", err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	k := newKube(kc, pc, dc, opts)
	k.canWatch = func(ctx context.Context, groupVersion, resource string) (bool, error) {
		return selfCanWatch(ctx, kc, groupVersion, resource)
	}
	return k, nil
}

// selfCanWatch asks the API server (SelfSubjectAccessReview) whether this
// client may list and watch resource cluster-wide.
func selfCanWatch(ctx context.Context, kc kubernetes.Interface, groupVersion, resource string) (bool, error) {
	gv, err := schema.ParseGroupVersion(groupVersion)
	if err != nil {
		return false, err
	}
	for _, verb := range []string{"list", "watch"} {
		r, err := kc.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: verb, Group: gv.Group, Version: gv.Version, Resource: resource,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			return false, fmt.Errorf("access review for %s %s: %w", verb, resource, err)
		}
		if !r.Status.Allowed {
			return false, nil
		}
	}
	return true, nil
}

// newKube builds a Kube from clients; tests pass fakes.
func newKube(kc kubernetes.Interface, pc policyclient.Interface, disc resourceDiscovery, opts KubeOptions) *Kube {
	k := &Kube{
		log:      opts.Logger,
		interval: opts.CRDCheckInterval,
		disc:     disc,
	}
	if k.log == nil {
		k.log = slog.Default()
	}
	if k.interval <= 0 {
		k.interval = DefaultCRDCheckInterval
	}
	// Pods are listed a pod at a time (podlist.go); the other kinds are
	// small enough to list whole.
	k.pods = withTransform(cache.NewSharedIndexInformer(podListWatch(kc), &corev1.Pod{}, 0, cache.Indexers{}), transformPod)
	k.namespaces = withTransform(coreinformers.NewNamespaceInformer(kc, 0, cache.Indexers{}), transformNamespace)
	k.nodes = withTransform(coreinformers.NewNodeInformer(kc, 0, cache.Indexers{}), transformNode)
	k.networkPolicies = withTransform(networkinginformers.NewNetworkPolicyInformer(kc, metav1.NamespaceAll, 0, cache.Indexers{}), transformPolicy)
	k.crds = []*crdKind{
		{
			kind:         "AdminNetworkPolicy",
			groupVersion: v1alpha1.GroupVersion.String(),
			resource:     "adminnetworkpolicies",
			newInformer: func() cache.SharedIndexInformer {
				return withTransform(v1alpha1informers.NewAdminNetworkPolicyInformer(pc, 0, cache.Indexers{}), transformPolicy)
			},
			addTo: func(in *engine.Input, objs []any) {
				in.AdminNetworkPolicies = appendTyped(in.AdminNetworkPolicies, objs)
			},
		},
		{
			kind:         "BaselineAdminNetworkPolicy",
			groupVersion: v1alpha1.GroupVersion.String(),
			resource:     "baselineadminnetworkpolicies",
			newInformer: func() cache.SharedIndexInformer {
				return withTransform(v1alpha1informers.NewBaselineAdminNetworkPolicyInformer(pc, 0, cache.Indexers{}), transformPolicy)
			},
			addTo: func(in *engine.Input, objs []any) {
				in.BaselineAdminNetworkPolicies = appendTyped(in.BaselineAdminNetworkPolicies, objs)
			},
		},
		{
			kind:         "ClusterNetworkPolicy",
			groupVersion: v1alpha2.GroupVersion.String(),
			resource:     "clusternetworkpolicies",
			newInformer: func() cache.SharedIndexInformer {
				return withTransform(v1alpha2informers.NewClusterNetworkPolicyInformer(pc, 0, cache.Indexers{}), transformPolicy)
			},
			addTo: func(in *engine.Input, objs []any) {
				in.ClusterNetworkPolicies = appendTyped(in.ClusterNetworkPolicies, objs)
			},
		},
	}
	return k
}

// withTransform sets f as inf's transform function. SetTransform fails
// only on a started informer, which inf never is here.
func withTransform(inf cache.SharedIndexInformer, f cache.TransformFunc) cache.SharedIndexInformer {
	if err := inf.SetTransform(f); err != nil {
		panic(fmt.Sprintf("source: SetTransform on a new informer: %v", err))
	}
	return inf
}

func (k *Kube) coreInformers() []cache.SharedIndexInformer {
	return []cache.SharedIndexInformer{k.pods, k.namespaces, k.nodes, k.networkPolicies}
}

// Run starts the informers and watches until ctx ends. It calls changed
// after every add, delete and relevant update, once after the initial sync,
// once after a kind that appeared later has synced, and once after a kind
// that stopped being served was dropped. Discovery failures at start-up are
// retried until they succeed or ctx ends. Run may be called only once.
func (k *Kube) Run(ctx context.Context, changed func()) error {
	k.mu.Lock()
	if k.started {
		k.mu.Unlock()
		return errors.New("source: Kube.Run called more than once")
	}
	k.started = true
	k.changed = changed
	k.handler = cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { changed() },
		UpdateFunc: func(oldObj, newObj any) {
			if !sameContent(oldObj, newObj) {
				changed()
			}
		},
		DeleteFunc: func(any) { changed() },
	}
	k.mu.Unlock()

	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops every informer, including the CRD kinds'

	for _, inf := range k.coreInformers() {
		if _, err := inf.AddEventHandler(k.handler); err != nil {
			return fmt.Errorf("add event handler: %w", err)
		}
		wg.Go(func() { inf.RunWithContext(ctx) })
	}

	// The first discovery must succeed before the source can say it has
	// synced: otherwise the first snapshot could miss a served kind.
	retry := min(time.Second, k.interval)
	for !k.checkCRDs(ctx, &wg) {
		if !sleep(ctx, retry) {
			return nil
		}
		retry = min(2*retry, k.interval)
	}
	k.mu.Lock()
	k.discovered = true
	k.mu.Unlock()

	if !cache.WaitForCacheSync(ctx.Done(), k.HasSynced) {
		return nil // ctx ended
	}
	k.mu.Lock()
	k.synced = true
	k.mu.Unlock()
	k.log.Info("kubernetes source synced")
	changed()

	t := time.NewTicker(k.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			k.checkCRDs(ctx, &wg)
		}
	}
}

// sleep waits for d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// checkCRDs asks discovery which network-policy-api kinds are served,
// starts informers for kinds that appeared and stops those whose kind went
// away (dropping their objects). A group version that discovery fails to
// answer keeps its current state. checkCRDs reports whether every group
// version was answered.
func (k *Kube) checkCRDs(ctx context.Context, wg *sync.WaitGroup) bool {
	answered := true
	served := make(map[string]map[string]bool) // group version → resources
	for _, c := range k.crds {
		if _, done := served[c.groupVersion]; done {
			continue
		}
		list, err := k.disc.ServerResourcesForGroupVersion(c.groupVersion)
		switch {
		case apierrors.IsNotFound(err):
			served[c.groupVersion] = map[string]bool{}
		case err != nil:
			k.log.Warn("discovery failed; keeping the current set of watched kinds", "groupVersion", c.groupVersion, "err", err)
			answered = false
			served[c.groupVersion] = nil // unknown
		default:
			rs := make(map[string]bool, len(list.APIResources))
			for _, r := range list.APIResources {
				rs[r.Name] = true
			}
			served[c.groupVersion] = rs
		}
	}

	k.mu.Lock()
	dropped := false
	for _, c := range k.crds {
		rs := served[c.groupVersion]
		if rs == nil {
			continue
		}
		if rs[c.resource] && c.informer == nil && k.canWatch != nil {
			ok, err := k.canWatch(ctx, c.groupVersion, c.resource)
			if err != nil {
				k.log.Warn("cannot check access; will retry", "kind", c.kind, "err", err)
				continue
			}
			if !ok {
				if !c.forbiddenLogged {
					k.log.Warn("kind is served but this ServiceAccount may not list and watch it; running without it (install the flavour that grants it)",
						"kind", c.kind, "groupVersion", c.groupVersion)
					c.forbiddenLogged = true
				}
				continue
			}
		}
		switch {
		case rs[c.resource] && c.informer == nil:
			k.startCRD(ctx, wg, c)
		case !rs[c.resource] && c.informer != nil:
			k.log.Warn("kind is no longer served; dropping its objects", "kind", c.kind, "groupVersion", c.groupVersion)
			c.stop()
			c.informer, c.stop = nil, nil
			c.missingLogged = true
			dropped = true
		case !rs[c.resource] && !c.missingLogged:
			k.log.Info("kind is not served; running without it until it appears", "kind", c.kind, "groupVersion", c.groupVersion)
			c.missingLogged = true
		}
	}
	notify := dropped && k.synced
	k.mu.Unlock()
	if notify {
		k.changed()
	}
	return answered
}

// startCRD starts an informer for c. Called with k.mu held.
func (k *Kube) startCRD(ctx context.Context, wg *sync.WaitGroup, c *crdKind) {
	if c.missingLogged {
		k.log.Info("kind is now served; watching it", "kind", c.kind, "groupVersion", c.groupVersion)
	} else {
		k.log.Info("watching kind", "kind", c.kind, "groupVersion", c.groupVersion)
	}
	c.missingLogged = false
	inf := c.newInformer()
	if _, err := inf.AddEventHandler(k.handler); err != nil {
		// Impossible on a new informer; do not watch half-wired.
		k.log.Error("cannot watch kind", "kind", c.kind, "err", err)
		return
	}
	ictx, stop := context.WithCancel(ctx)
	c.informer, c.stop = inf, stop
	wg.Go(func() { inf.RunWithContext(ictx) })
	if k.synced {
		// A kind that appears after the initial sync makes HasSynced false
		// until its list is in; say so once it is, so the state rebuilds.
		wg.Go(func() {
			if cache.WaitForCacheSync(ictx.Done(), inf.HasSynced) {
				k.changed()
			}
		})
	}
}

// HasSynced reports whether discovery answered and every running informer
// has synced. It turns false for a moment when a kind appears later, until
// its informer has listed it, so no snapshot holds part of that kind.
func (k *Kube) HasSynced() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.discovered {
		return false
	}
	for _, inf := range k.coreInformers() {
		if !inf.HasSynced() {
			return false
		}
	}
	for _, c := range k.crds {
		if c.informer != nil && !c.informer.HasSynced() {
			return false
		}
	}
	return true
}

// Input returns the informers' current objects. Each slice is a copy taken
// at one moment; the objects are shared with the caches and must not be
// modified.
func (k *Kube) Input() engine.Input {
	var in engine.Input
	in.Pods = appendTyped[*corev1.Pod](nil, k.pods.GetStore().List())
	in.Namespaces = appendTyped[*corev1.Namespace](nil, k.namespaces.GetStore().List())
	in.Nodes = appendTyped[*corev1.Node](nil, k.nodes.GetStore().List())
	in.NetworkPolicies = appendTyped[*networkingv1.NetworkPolicy](nil, k.networkPolicies.GetStore().List())
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.crds {
		if c.informer != nil {
			c.addTo(&in, c.informer.GetStore().List())
		}
	}
	return in
}

// appendTyped appends the objects of type T in objs to dst.
func appendTyped[T any](dst []T, objs []any) []T {
	for _, o := range objs {
		if t, ok := o.(T); ok {
			dst = append(dst, t)
		}
	}
	return dst
}
