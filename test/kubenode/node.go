package kubenode

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tollgate/tollgate/internal/proc"
	"github.com/tollgate/tollgate/test/netsim"
)

// Node is a started node.
type Node struct {
	// Config is what the node was started with.
	Config Config

	containerd, kubelet, kubeProxy *proc.Proc
}

// Start creates the node's namespace and its veth to the host, then starts
// containerd and, once it answers, the kubelet and kube-proxy. It does not
// wait for the Node to register or turn Ready. On failure it returns what
// it started so that the caller can Stop it.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	n := &Node{Config: cfg}
	if err := n.writeFiles(); err != nil {
		return n, err
	}
	if err := n.setupNetwork(); err != nil {
		return n, err
	}
	var err error
	n.containerd, err = n.start("containerd", "containerd", "--config", cfg.containerdConfig())
	if err != nil {
		return n, err
	}
	if err := n.waitContainerd(ctx); err != nil {
		return n, err
	}
	n.kubelet, err = n.start("kubelet", cfg.Kubelet,
		"--config="+cfg.kubeletConfig(),
		"--kubeconfig="+cfg.KubeletKubeconfig,
		"--root-dir="+cfg.KubeletRoot(),
		// Not derived from --root-dir: without it both kubelets would
		// share /var/lib/kubelet/pki.
		"--cert-dir="+filepath.Join(cfg.KubeletRoot(), "pki"),
		"--hostname-override="+cfg.Name,
		"--node-ip="+cfg.NodeIP.String(),
		"--node-labels="+cfg.labelFlag(),
		"--v=1",
	)
	if err != nil {
		return n, err
	}
	n.kubeProxy, err = n.start("kube-proxy", cfg.KubeProxy, "--config="+cfg.kubeProxyConfig(), "--v=1")
	return n, err
}

// writeFiles writes the node's configuration files.
func (n *Node) writeFiles() error {
	c := n.Config
	for _, dir := range []string{c.Dir, c.cniConfDir(), c.KubeletRoot(), c.podLogs()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("node %s: %w", c.Name, err)
		}
	}
	cni, err := c.cniConflist()
	if err != nil {
		return err
	}
	kubelet, err := c.kubeletYAML()
	if err != nil {
		return err
	}
	proxy, err := c.kubeProxyYAML()
	if err != nil {
		return err
	}
	files := map[string][]byte{
		c.containerdConfig(): []byte(c.containerdTOML()),
		filepath.Join(c.cniConfDir(), "10-bridge.conflist"): cni,
		c.kubeletConfig():   kubelet,
		c.kubeProxyConfig(): proxy,
	}
	for path, data := range files {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return fmt.Errorf("node %s: %w", c.Name, err)
		}
	}
	// Each run's logs start empty (the process logs are appended to).
	for _, name := range []string{"containerd", "kubelet", "kube-proxy"} {
		if err := os.Remove(filepath.Join(c.Dir, name+".log")); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("node %s: %w", c.Name, err)
		}
	}
	// The kubelet checks that its cgroup root exists in every hierarchy.
	return forEachCgroupHierarchy(func(root string) error {
		return os.MkdirAll(filepath.Join(root, c.CgroupRoot()), 0o755)
	})
}

// setupNetwork creates the node's namespace (forwarding on, bridged traffic
// through netfilter as kube-proxy and Tollgate need) and its veth to the
// host, with routes to the apiserver and the Service range through the host
// and, on the host, to the node's pods (replies from the apiserver).
func (n *Node) setupNetwork() error {
	c := n.Config
	if err := netsim.AddNetns(c.Netns); err != nil {
		return err
	}
	if err := netsim.SetSysctls(c.Netns, map[string]string{
		"net/ipv4/ip_forward":                 "1",
		"net/bridge/bridge-nf-call-iptables":  "1",
		"net/bridge/bridge-nf-call-ip6tables": "1",
	}); err != nil {
		return err
	}
	err := netsim.IPBatch("",
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", c.HostVeth, c.Netns),
		fmt.Sprintf("addr add %s/24 dev %s", c.HostIP, c.HostVeth),
		fmt.Sprintf("link set %s up", c.HostVeth),
		fmt.Sprintf("route add %s via %s dev %s", c.PodCIDR, c.NodeIP, c.HostVeth),
	)
	if err != nil {
		return fmt.Errorf("node %s: host veth: %w", c.Name, err)
	}
	err = netsim.IPBatch(c.Netns,
		"link set lo up",
		fmt.Sprintf("addr add %s/24 dev eth0", c.NodeIP),
		"link set eth0 up",
		fmt.Sprintf("route add %s/32 via %s dev eth0", c.APIServer, c.HostIP),
		fmt.Sprintf("route add %s via %s dev eth0", c.ServiceCIDR, c.HostIP),
	)
	if err != nil {
		return fmt.Errorf("node %s: node veth: %w", c.Name, err)
	}
	return nil
}

// ConnectNodes joins two nodes with a veth pair (addresses aAddr and bAddr
// in one /24) and routes each node's pod CIDR and node IP to the other.
func ConnectNodes(a, b Config, aAddr, bAddr string) error {
	const link = "peer0"
	err := netsim.IPBatch(a.Netns,
		fmt.Sprintf("link add %s type veth peer name %s netns %s", link, link, b.Netns),
		fmt.Sprintf("addr add %s/24 dev %s", aAddr, link),
		fmt.Sprintf("link set %s up", link),
	)
	if err != nil {
		return fmt.Errorf("connect %s and %s: %w", a.Name, b.Name, err)
	}
	if err := netsim.IPBatch(b.Netns, fmt.Sprintf("addr add %s/24 dev %s", bAddr, link), fmt.Sprintf("link set %s up", link)); err != nil {
		return fmt.Errorf("connect %s and %s: %w", a.Name, b.Name, err)
	}
	for _, r := range []struct {
		from, to Config
		via      string
	}{{a, b, bAddr}, {b, a, aAddr}} {
		if err := netsim.IPBatch(r.from.Netns,
			fmt.Sprintf("route add %s via %s dev %s", r.to.PodCIDR, r.via, link),
			fmt.Sprintf("route add %s/32 via %s dev %s", r.to.NodeIP, r.via, link),
		); err != nil {
			return fmt.Errorf("route %s to %s: %w", r.from.Name, r.to.Name, err)
		}
	}
	return nil
}

// start runs a binary inside the node's network namespace (nsenter --net,
// which keeps the host's /sys and cgroup mounts), logging to Dir/name.log.
func (n *Node) start(name, binary string, args ...string) (*proc.Proc, error) {
	argv := append([]string{"--net=" + filepath.Join("/var/run/netns", n.Config.Netns), binary}, args...)
	p, err := proc.Start(exec.Command("nsenter", argv...), filepath.Join(n.Config.Dir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Config.Name, err)
	}
	return p, nil
}

// waitContainerd waits until containerd answers on its socket.
func (n *Node) waitContainerd(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if n.containerd.Exited() {
			return fmt.Errorf("node %s: containerd exited:\n%s", n.Config.Name, tail(n.containerd.Log(), 3000))
		}
		if exec.CommandContext(ctx, "ctr", "--address", n.Config.Socket(), "version").Run() == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: containerd did not answer on %s:\n%s", n.Config.Name, n.Config.Socket(), tail(n.containerd.Log(), 3000))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Exited returns an error naming a node process that has exited, with the
// tail of its log, or nil while they all run.
func (n *Node) Exited() error {
	var errs []error
	for name, p := range map[string]*proc.Proc{"containerd": n.containerd, "kubelet": n.kubelet, "kube-proxy": n.kubeProxy} {
		if p != nil && p.Exited() {
			errs = append(errs, fmt.Errorf("node %s: %s exited (code %d):\n%s", n.Config.Name, name, p.ExitCode(), tail(p.Log(), 3000)))
		}
	}
	return errors.Join(errs...)
}

// Stop stops kube-proxy and the kubelet, then Sweeps the node: its pods'
// processes, containerd and its shims, mounts, namespaces and cgroups.
func (n *Node) Stop() error {
	for _, p := range []*proc.Proc{n.kubeProxy, n.kubelet} {
		if p != nil {
			p.Stop()
		}
	}
	return Sweep(n.Config)
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		s = s[len(s)-n:]
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	return s
}
