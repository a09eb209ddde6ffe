package kubenode

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
)

// Config describes one node.
type Config struct {
	// Name is the node's name, registered by its kubelet.
	Name string
	// Dir holds everything of the node: configuration, containerd's root
	// and state, the kubelet's root dir, pod logs and process logs.
	Dir string
	// Netns is the name of the node's network namespace.
	Netns string
	// HostVeth is the host end of the node's veth, carrying HostIP; the
	// node end is the node's eth0, carrying NodeIP.
	HostVeth string
	// HostIP and NodeIP share a /24.
	HostIP, NodeIP netip.Addr
	// PodCIDR is the node's pod range (bridge cni0, host-local IPAM).
	PodCIDR netip.Prefix
	// ClusterCIDR is every node's pod ranges together (for kube-proxy).
	ClusterCIDR netip.Prefix
	// ServiceCIDR is the range of ClusterIPs; the node routes it to the host
	// so that locally started connections find a route before kube-proxy's
	// DNAT rewrites them.
	ServiceCIDR netip.Prefix
	// APIServer is the apiserver's address, routed through the host veth.
	APIServer netip.Addr
	// Kubelet and KubeProxy are the binaries.
	Kubelet, KubeProxy string
	// KubeletKubeconfig and KubeProxyKubeconfig authenticate them.
	KubeletKubeconfig, KubeProxyKubeconfig string
	// SandboxImage is containerd's pause image (it is never pulled: import
	// it before starting pods).
	SandboxImage string
	// Labels are added to the Node by its kubelet.
	Labels map[string]string
}

// Paths of the node's files, all under Dir.

// Socket is containerd's socket (for the kubelet and for `ctr --address`).
func (c Config) Socket() string { return filepath.Join(c.Dir, "containerd.sock") }

// KubeletRoot is the kubelet's --root-dir.
func (c Config) KubeletRoot() string { return filepath.Join(c.Dir, "kubelet") }

// CgroupRoot is the cgroup every pod of the node lives under, in each
// hierarchy.
func (c Config) CgroupRoot() string { return "/tollgate-" + c.Name }

func (c Config) containerdConfig() string { return filepath.Join(c.Dir, "containerd.toml") }
func (c Config) cniConfDir() string       { return filepath.Join(c.Dir, "cni", "net.d") }
func (c Config) kubeletConfig() string    { return filepath.Join(c.Dir, "kubelet.yaml") }
func (c Config) kubeProxyConfig() string  { return filepath.Join(c.Dir, "kube-proxy.yaml") }
func (c Config) podLogs() string          { return filepath.Join(c.Dir, "pod-logs") }

// containerdTOML is containerd's configuration: its own root, state, socket
// and runc root, the CRI plugin with the node's CNI directory, cgroupfs,
// a local sandbox image, and restrict_oom_score_adj (root here lacks
// CAP_SYS_RESOURCE: without it runc fails to start the pause container).
func (c Config) containerdTOML() string {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	return strings.Join([]string{
		`version = 2`,
		`root = ` + q(filepath.Join(c.Dir, "containerd")),
		`state = ` + q(filepath.Join(c.Dir, "containerd-state")),
		`disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]`,
		``,
		`[grpc]`,
		`  address = ` + q(c.Socket()),
		`[ttrpc]`,
		`  address = ` + q(c.Socket()+".ttrpc"),
		`[debug]`,
		`  address = ""`,
		`[metrics]`,
		`  address = ""`,
		``,
		`[plugins."io.containerd.grpc.v1.cri"]`,
		`  sandbox_image = ` + q(c.SandboxImage),
		`  restrict_oom_score_adj = true`,
		`  stream_server_address = "127.0.0.1"`,
		`  stream_server_port = "0"`,
		`  enable_selinux = false`,
		`  [plugins."io.containerd.grpc.v1.cri".containerd]`,
		`    snapshotter = "overlayfs"`,
		`    default_runtime_name = "runc"`,
		`    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]`,
		`      runtime_type = "io.containerd.runc.v2"`,
		`      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]`,
		`        SystemdCgroup = false`,
		`        Root = ` + q(filepath.Join(c.Dir, "runc")),
		`  [plugins."io.containerd.grpc.v1.cri".cni]`,
		`    bin_dir = "/usr/lib/cni"`,
		`    conf_dir = ` + q(c.cniConfDir()),
		`    max_conf_num = 1`,
		``,
	}, "\n")
}

// cniConflist is the pod network: a bridge in the node's namespace with the
// node as gateway and no masquerading (pod addresses stay visible to other
// nodes, as policies need), host-local IPAM in the node's directory, and
// portmap for hostPorts.
func (c Config) cniConflist() ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "tollgate-" + c.Name,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      "cni0",
				"isGateway":   true,
				"ipMasq":      false,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": c.PodCIDR.String()}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": filepath.Join(c.Dir, "cni", "ipam"),
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// kubeletYAML is the kubelet's configuration (JSON, which is YAML): the
// settings checked on this machine (cgroupfs, cgroup v1 allowed, no QoS
// cgroups, no node allocatable enforcement, swap tolerated), anonymous
// AlwaysAllow authorisation so the apiserver can reach logs and exec, no
// cluster DNS, and everything the kubelet writes kept under Dir.
func (c Config) kubeletYAML() ([]byte, error) {
	conf := map[string]any{
		"apiVersion": "kubelet.config.k8s.io/v1beta1",
		"kind":       "KubeletConfiguration",
		"authentication": map[string]any{
			"anonymous": map[string]bool{"enabled": true},
			"webhook":   map[string]bool{"enabled": false},
		},
		"authorization":      map[string]string{"mode": "AlwaysAllow"},
		"address":            c.NodeIP.String(),
		"readOnlyPort":       0,
		"healthzBindAddress": "127.0.0.1",
		"cgroupDriver":       "cgroupfs",
		"failCgroupV1":       false,
		// QoS cgroups under the node's own root: without them the kubelet
		// gives pods no cgroup parent and containerd puts every node's
		// containers under the same /k8s.io.
		"cgroupsPerQOS":            true,
		"cgroupRoot":               c.CgroupRoot(),
		"enforceNodeAllocatable":   []string{},
		"failSwapOn":               false,
		"containerRuntimeEndpoint": "unix://" + c.Socket(),
		"podLogsDir":               c.podLogs(),
		"clusterDomain":            "cluster.local",
		"resolvConf":               "/etc/resolv.conf",
		"serializeImagePulls":      false,
		// Disk is shared with everything else on the machine: evict only
		// when it is really full, and never garbage-collect the imported
		// images (they cannot be pulled again).
		"evictionHard": map[string]string{
			"memory.available":  "100Mi",
			"nodefs.available":  "1%",
			"imagefs.available": "1%",
		},
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"registerNode":                true,
		"rotateCertificates":          false,
	}
	return json.MarshalIndent(conf, "", "  ")
}

// kubeProxyYAML is kube-proxy's configuration: iptables mode, local traffic
// told apart by the cluster CIDR, and the conntrack limits left as they are
// (they are global to the machine).
func (c Config) kubeProxyYAML() ([]byte, error) {
	conf := map[string]any{
		"apiVersion":         "kubeproxy.config.k8s.io/v1alpha1",
		"kind":               "KubeProxyConfiguration",
		"clientConnection":   map[string]string{"kubeconfig": c.KubeProxyKubeconfig},
		"mode":               "iptables",
		"clusterCIDR":        c.ClusterCIDR.String(),
		"hostnameOverride":   c.Name,
		"healthzBindAddress": "127.0.0.1:10256",
		"metricsBindAddress": "127.0.0.1:10249",
		"conntrack": map[string]any{
			"maxPerCore":            0,
			"min":                   0,
			"tcpEstablishedTimeout": "0s",
			"tcpCloseWaitTimeout":   "0s",
		},
		"iptables": map[string]any{"syncPeriod": "10s", "minSyncPeriod": "0s"},
	}
	return json.MarshalIndent(conf, "", "  ")
}

// labelFlag renders Labels for --node-labels, sorted.
func (c Config) labelFlag() string {
	var kv []string
	for k, v := range c.Labels {
		kv = append(kv, fmt.Sprintf("%s=%s", k, v))
	}
	slices.Sort(kv)
	return strings.Join(kv, ",")
}
