package kubenode

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

func testConfig(dir string) Config {
	return Config{
		Name: "node-1", Dir: dir, Netns: "tgk-node-1", HostVeth: "tgk-n1",
		HostIP: netip.MustParseAddr("10.200.1.1"), NodeIP: netip.MustParseAddr("10.200.1.2"),
		PodCIDR: netip.MustParsePrefix("10.244.1.0/24"), ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"),
		ServiceCIDR: netip.MustParsePrefix("10.96.0.0/16"), APIServer: netip.MustParseAddr("10.200.0.1"),
		KubeProxyKubeconfig: "/k/proxy.kubeconfig", SandboxImage: "registry.k8s.io/pause:3.10.1",
		Labels: map[string]string{"b": "2", "a": "1"},
	}
}

func TestContainerdConfigIsTheNodes(t *testing.T) {
	toml := testConfig("/c/nodes/node-1").containerdTOML()
	for _, want := range []string{
		`root = "/c/nodes/node-1/containerd"`,
		`state = "/c/nodes/node-1/containerd-state"`,
		`address = "/c/nodes/node-1/containerd.sock"`,
		`Root = "/c/nodes/node-1/runc"`,
		`conf_dir = "/c/nodes/node-1/cni/net.d"`,
		`sandbox_image = "registry.k8s.io/pause:3.10.1"`,
		`restrict_oom_score_adj = true`,
		`SystemdCgroup = false`,
	} {
		if !strings.Contains(toml, want) {
			t.Errorf("containerd.toml lacks %s:\n%s", want, toml)
		}
	}
}

func TestCNIConflist(t *testing.T) {
	data, err := testConfig("/c/n1").cniConflist()
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Plugins []struct {
			Type   string
			IPMasq bool `json:"ipMasq"`
			IPAM   struct {
				Ranges  [][]struct{ Subnet string }
				DataDir string `json:"dataDir"`
			}
		}
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	if len(conf.Plugins) != 2 || conf.Plugins[0].Type != "bridge" || conf.Plugins[1].Type != "portmap" {
		t.Fatalf("plugins = %+v, want bridge then portmap", conf.Plugins)
	}
	b := conf.Plugins[0]
	if b.IPMasq {
		t.Error("pods are masqueraded: other nodes would see the node's address, not the pod's")
	}
	if b.IPAM.Ranges[0][0].Subnet != "10.244.1.0/24" || b.IPAM.DataDir != "/c/n1/cni/ipam" {
		t.Errorf("ipam = %+v", b.IPAM)
	}
}

func TestKubeletConfig(t *testing.T) {
	c := testConfig("/c/n1")
	data, err := c.kubeletYAML()
	if err != nil {
		t.Fatal(err)
	}
	var conf map[string]any
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]any{
		"cgroupDriver": "cgroupfs", "failCgroupV1": false, "cgroupsPerQOS": true, "failSwapOn": false,
		"cgroupRoot": "/tollgate-node-1", "podLogsDir": "/c/n1/pod-logs",
		"containerRuntimeEndpoint": "unix:///c/n1/containerd.sock", "address": "10.200.1.2",
	} {
		if conf[key] != want {
			t.Errorf("%s = %v, want %v", key, conf[key], want)
		}
	}
	if got := c.labelFlag(); got != "a=1,b=2" {
		t.Errorf("labels = %q", got)
	}
	proxy, err := c.kubeProxyYAML()
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(proxy, &conf); err != nil {
		t.Fatal(err)
	}
	if conf["mode"] != "iptables" || conf["clusterCIDR"] != "10.244.0.0/16" || conf["hostnameOverride"] != "node-1" {
		t.Errorf("kube-proxy config = %s", proxy)
	}
}

func TestMountPointsIn(t *testing.T) {
	info := strings.Join([]string{
		`22 1 254:0 / / rw - ext4 /dev/vda rw`,
		`30 22 0:40 / /c/n1/kubelet rw - ext4 /dev/vda rw`,
		`31 30 0:41 / /c/n1/kubelet/pods/u/volumes/x rw - tmpfs tmpfs rw`,
		`32 22 0:42 / /c/n10 rw - tmpfs tmpfs rw`,
		`33 22 0:43 / /c/n1/with\040space rw - tmpfs tmpfs rw`,
	}, "\n")
	got := mountPointsIn(info, "/c/n1")
	want := []string{"/c/n1/kubelet/pods/u/volumes/x", "/c/n1/kubelet", "/c/n1/with space"}
	if !slices.Equal(got, want) {
		t.Errorf("mount points = %q, want %q", got, want)
	}
}

// TestNodeProcesses finds a process by the directory on its command line,
// with its children, and never the test itself.
func TestNodeProcesses(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", "sleep 60 & sleep 60; : "+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var procs []int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var err error
		if procs, err = nodeProcesses(dir); err != nil {
			t.Fatal(err)
		}
		if len(procs) == 3 {
			break
		}
	}
	if len(procs) != 3 || !slices.Contains(procs, cmd.Process.Pid) {
		t.Fatalf("processes = %v, want the shell %d and its two sleeps", procs, cmd.Process.Pid)
	}
	if slices.Contains(procs, os.Getpid()) {
		t.Error("the test itself was listed")
	}
}
