// Package localcluster assembles the two-node Kubernetes cluster of
// `make cluster-up` on this machine: the control plane of test/cluster
// (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) listening
// on an address of its own on the host, and the nodes of test/kubenode, each
// in its own network namespace, joined to each other and to the host.
//
// Addresses (node i counts from 1):
//
//	apiserver          10.200.0.1 (host, on the veth pair tgk-api/tgk-api-peer)
//	node i             10.200.i.2 (eth0), host end 10.200.i.1 (tgk-n<i>)
//	node link          10.201.0.i (peer0, between the nodes)
//	pods of node i     10.244.i.0/24 (bridge cni0)
//	Services           10.96.0.0/16
//
// The host's netfilter rules are never touched (everything runs with
// nsenter --net into the nodes); its links and routes gain only the veths
// above, which go with the cluster. HostState dumps what must come back
// exactly as it was, and Down compares it with the dump Up took.
package localcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tollgate/tollgate/test/cluster"
	"github.com/tollgate/tollgate/test/kubenode"
	"github.com/tollgate/tollgate/test/netsim"
)

// Fixed addresses of the cluster (see the package documentation).
var (
	// APIServerIP is where the apiserver listens, on the host.
	APIServerIP = netip.MustParseAddr("10.200.0.1")
	// ClusterCIDR holds every node's pod range.
	ClusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	// ServiceCIDR is the ClusterIP range (test/cluster's).
	ServiceCIDR = netip.MustParsePrefix(cluster.ServiceClusterIPRange)
)

// The host ends of the apiserver's veth pair.
const (
	apiVeth     = "tgk-api"
	apiVethPeer = "tgk-api-peer"
)

// Binaries are the Kubernetes components the cluster runs.
type Binaries struct {
	APIServer, ControllerManager, Scheduler, Kubelet, KubeProxy string
}

// Options configure the cluster.
type Options struct {
	// Dir holds the cluster: control-plane/ and nodes/<name>/.
	Dir string
	// Binaries are the components to run.
	Binaries Binaries
	// SandboxImage is the pause image the nodes' containerd uses.
	SandboxImage string
	// Nodes is the number of nodes: 1 or 2 (default 2).
	Nodes int
}

// AdminKubeconfig is the path of the admin kubeconfig of a cluster in dir.
func AdminKubeconfig(dir string) string {
	return filepath.Join(dir, "control-plane", "admin.kubeconfig")
}

// NodeName is the name of node i (counting from 1).
func NodeName(i int) string { return "node-" + strconv.Itoa(i) }

// NodeConfigs returns the configuration of every node. It depends only on
// the options, so Sweep can find what a crashed run left.
func NodeConfigs(opts Options) []kubenode.Config {
	n := opts.Nodes
	if n == 0 {
		n = 2
	}
	var out []kubenode.Config
	for i := 1; i <= n; i++ {
		name := NodeName(i)
		dir := filepath.Join(opts.Dir, "nodes", name)
		out = append(out, kubenode.Config{
			Name:                name,
			Dir:                 dir,
			Netns:               "tgk-" + name,
			HostVeth:            fmt.Sprintf("tgk-n%d", i),
			HostIP:              netip.AddrFrom4([4]byte{10, 200, byte(i), 1}),
			NodeIP:              netip.AddrFrom4([4]byte{10, 200, byte(i), 2}),
			PodCIDR:             netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
			ClusterCIDR:         ClusterCIDR,
			ServiceCIDR:         ServiceCIDR,
			APIServer:           APIServerIP,
			Kubelet:             opts.Binaries.Kubelet,
			KubeProxy:           opts.Binaries.KubeProxy,
			KubeletKubeconfig:   filepath.Join(opts.Dir, "control-plane", "system-node-"+name+".kubeconfig"),
			KubeProxyKubeconfig: filepath.Join(opts.Dir, "control-plane", "system-kube-proxy.kubeconfig"),
			SandboxImage:        opts.SandboxImage,
			Labels:              map[string]string{"node-index": strconv.Itoa(i)},
		})
	}
	return out
}

// Cluster is a running local cluster.
type Cluster struct {
	opts         Options
	controlPlane *cluster.Cluster
	nodes        []*kubenode.Node
}

// Start starts the control plane and the nodes and waits until every node
// is Ready and kube-proxy programs the "kubernetes" Service in it. On
// failure everything started is stopped again.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	c = &Cluster{opts: opts}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	nodes := NodeConfigs(opts)
	if err := netsim.IPBatch("",
		fmt.Sprintf("link add %s type veth peer name %s", apiVeth, apiVethPeer),
		fmt.Sprintf("addr add %s/32 dev %s", APIServerIP, apiVeth),
		"link set "+apiVethPeer+" up",
		"link set "+apiVeth+" up",
	); err != nil {
		return c, fmt.Errorf("apiserver address: %w", err)
	}
	users := []cluster.User{{Name: "system:kube-proxy"}}
	for _, n := range nodes {
		users = append(users, cluster.User{Name: "system:node:" + n.Name, Groups: []string{"system:nodes"}})
	}
	c.controlPlane, err = cluster.Start(ctx, cluster.Options{
		Dir:                filepath.Join(opts.Dir, "control-plane"),
		KubeAPIServer:      opts.Binaries.APIServer,
		ControllerManager:  opts.Binaries.ControllerManager,
		Scheduler:          opts.Binaries.Scheduler,
		BindAddress:        APIServerIP.String(),
		Users:              users,
		StartTimeout:       2 * time.Minute,
		ExtraAPIServerArgs: []string{"--kubelet-preferred-address-types=InternalIP"},
	})
	if err != nil {
		return c, err
	}
	for _, u := range users {
		if _, err := c.controlPlane.KubeconfigFor(u.Name); err != nil {
			return c, err
		}
	}
	for _, cfg := range nodes {
		n, err := kubenode.Start(ctx, cfg)
		if n != nil {
			c.nodes = append(c.nodes, n)
		}
		if err != nil {
			return c, err
		}
	}
	for i := 1; i < len(nodes); i++ {
		if err := kubenode.ConnectNodes(nodes[0], nodes[i], fmt.Sprintf("10.201.0.%d", 1), fmt.Sprintf("10.201.0.%d", i+1)); err != nil {
			return c, err
		}
	}
	if err := c.waitReady(ctx); err != nil {
		return c, err
	}
	return c, nil
}

// waitReady waits until every node is Ready and has the kubernetes Service
// in its kube-proxy rules.
func (c *Cluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	client := c.controlPlane.Client()
	for {
		err := c.Exited()
		if err != nil {
			return err
		}
		ready := 0
		list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err == nil {
			for _, n := range list.Items {
				for _, cond := range n.Status.Conditions {
					if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
						ready++
					}
				}
			}
		}
		if ready == len(c.nodes) && c.servicesProgrammed() {
			slog.Info("local cluster ready", "nodes", ready, "apiserver", c.controlPlane.APIServerAddr())
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %d Ready nodes (have %d): %w", len(c.nodes), ready, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// servicesProgrammed reports whether every node's kube-proxy has a rule for
// the default/kubernetes Service.
func (c *Cluster) servicesProgrammed() bool {
	for _, n := range c.nodes {
		out, err := netsim.Exec(n.Config.Netns, "iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES")
		if err != nil || !strings.Contains(out, "default/kubernetes:https") {
			return false
		}
	}
	return true
}

// Exited returns an error naming any component that has exited.
func (c *Cluster) Exited() error {
	var errs []error
	if c.controlPlane != nil {
		errs = append(errs, c.controlPlane.ControllersExited())
	}
	for _, n := range c.nodes {
		errs = append(errs, n.Exited())
	}
	return errors.Join(errs...)
}

// ControlPlane is the running control plane.
func (c *Cluster) ControlPlane() *cluster.Cluster { return c.controlPlane }

// Stop stops the nodes (sweeping everything they left), then the control
// plane, and removes the apiserver's veth pair.
func (c *Cluster) Stop() error {
	var errs []error
	for _, n := range c.nodes {
		errs = append(errs, n.Stop())
	}
	if c.controlPlane != nil {
		c.controlPlane.Stop()
	}
	errs = append(errs, Sweep(c.opts))
	return errors.Join(errs...)
}

// Sweep removes whatever a cluster in opts.Dir left behind (nodes, their
// pods and mounts, the apiserver's veth pair). Running it on a cluster that
// is down does nothing.
func Sweep(opts Options) error {
	var errs []error
	for _, cfg := range NodeConfigs(opts) {
		errs = append(errs, kubenode.Sweep(cfg))
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", apiVeth)); err == nil {
		errs = append(errs, netsim.IPBatch("", "link del "+apiVeth))
	}
	return errors.Join(errs...)
}
