package cluster

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ServiceClusterIPRange is the Service CIDR the apiserver allocates from.
const ServiceClusterIPRange = "10.96.0.0/16"

// ServiceAccountIssuer is the issuer of ServiceAccount tokens.
const ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// Options configure Start.
type Options struct {
	// CRDs are the CRD sets installed before Start returns.
	CRDs []CRDSet
	// KubeAPIServer is the kube-apiserver binary; empty means KubeAPIServerPath().
	KubeAPIServer string
	// ExtraAPIServerArgs are appended to the kube-apiserver command line.
	ExtraAPIServerArgs []string
	// StartTimeout bounds the wait for etcd and the apiserver; default 90s.
	StartTimeout time.Duration
	// BindAddress is the address the apiserver listens on and advertises
	// (the endpoint of the in-cluster "kubernetes" Service); default
	// 127.0.0.1. Nodes in network namespaces need one they can reach.
	BindAddress string
	// Dir, when set, holds the cluster's files (logs, keys, kubeconfigs)
	// instead of a temporary directory, and Stop leaves it in place.
	Dir string
	// Users are further token users, e.g. system:node:<name> in the group
	// system:nodes for a kubelet; KubeconfigFor writes their kubeconfigs.
	Users []User
	// ControllerManager and Scheduler, when set, are the
	// kube-controller-manager and kube-scheduler binaries to run against
	// the apiserver. With a controller manager the ServiceAccount admission
	// plugin stays on (it creates the default ServiceAccounts) and the
	// kube-root-ca.crt ConfigMaps are published.
	ControllerManager, Scheduler string
}

// User is a token user of the apiserver.
type User struct {
	// Name is the user name, e.g. system:kube-proxy.
	Name string
	// Groups are the user's groups.
	Groups []string
}

// Cluster is a running etcd and kube-apiserver pair.
type Cluster struct {
	opts       Options
	dir        string
	keepDir    bool
	etcdDir    string
	binary     string
	etcdURL    string
	host       string
	port       int
	adminToken string
	tokens     map[string]string // by user name, for Options.Users
	caData     []byte
	kubeconfig string

	etcd      *process
	apiserver *process
	// controllers are kube-controller-manager and kube-scheduler.
	controllers []*process

	restConfig *rest.Config
	client     kubernetes.Interface
}

// Start starts etcd and kube-apiserver and waits until the apiserver is ready
// and the requested CRDs are established. The caller must call Stop.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 90 * time.Second
	}
	binary := opts.KubeAPIServer
	if binary == "" {
		var err error
		if binary, err = KubeAPIServerPath(); err != nil {
			return nil, err
		}
	}
	etcdBinary, err := exec.LookPath("etcd")
	if err != nil {
		return nil, fmt.Errorf("find etcd (apt-get install etcd-server): %w", err)
	}
	dir, keep := opts.Dir, opts.Dir != ""
	if keep {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create cluster directory: %w", err)
		}
	} else if dir, err = os.MkdirTemp("", "tollgate-cluster-"); err != nil {
		return nil, fmt.Errorf("create cluster directory: %w", err)
	}
	c := &Cluster{opts: opts, dir: dir, keepDir: keep, binary: binary, host: cmp.Or(opts.BindAddress, "127.0.0.1")}
	ok := false
	defer func() {
		if !ok {
			c.Stop()
		}
	}()

	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	start := time.Now()
	if err := c.startEtcd(ctx, etcdBinary); err != nil {
		return nil, err
	}
	if err := c.prepareAPIServer(); err != nil {
		return nil, err
	}
	if err := c.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	if err := c.startControllers(); err != nil {
		return nil, err
	}
	slog.Info("control plane ready", "server", c.restConfig.Host, "dir", c.dir, "took", time.Since(start).Round(time.Millisecond))
	for _, set := range opts.CRDs {
		if err := c.InstallCRDs(ctx, set); err != nil {
			return nil, err
		}
	}
	ok = true
	return c, nil
}

// startEtcd runs a single-member etcd on free loopback ports. Its data lives
// in /dev/shm when available: etcd fsyncs a lot and tests don't need it.
func (c *Cluster) startEtcd(ctx context.Context, binary string) error {
	base := ""
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		base = "/dev/shm"
	}
	etcdDir, err := os.MkdirTemp(base, "tollgate-etcd-")
	if err != nil {
		return fmt.Errorf("create etcd data directory: %w", err)
	}
	c.etcdDir = etcdDir
	ports, err := freePorts("127.0.0.1", 2)
	if err != nil {
		return err
	}
	c.etcdURL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	c.etcd, err = startProcess("etcd", filepath.Join(c.dir, "etcd.log"), binary,
		"--name=default",
		"--data-dir="+filepath.Join(etcdDir, "data"),
		"--listen-client-urls="+c.etcdURL,
		"--advertise-client-urls="+c.etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL,
		"--logger=zap",
		"--log-outputs=stderr",
	)
	if err != nil {
		return err
	}
	return poll(ctx, c.etcd, "etcd", func() (bool, error) {
		resp, err := http.Get(c.etcdURL + "/health")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}

// prepareAPIServer writes the files the apiserver needs and picks its port.
func (c *Cluster) prepareAPIServer() error {
	ports, err := freePorts(c.host, 1)
	if err != nil {
		return err
	}
	c.port = ports[0]
	if c.adminToken, err = randomToken(); err != nil {
		return err
	}
	tokens := fmt.Sprintf("%s,admin,admin-uid,\"system:masters\"\n", c.adminToken)
	c.tokens = map[string]string{}
	for i, u := range controllerUsers(c.opts) {
		token, err := randomToken()
		if err != nil {
			return err
		}
		c.tokens[u.Name] = token
		tokens += fmt.Sprintf("%s,%s,user-%d,\"%s\"\n", token, u.Name, i, strings.Join(u.Groups, ","))
	}
	if err := os.WriteFile(filepath.Join(c.dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return fmt.Errorf("write token file: %w", err)
	}
	if err := writeServiceAccountKeys(filepath.Join(c.dir, "sa.key"), filepath.Join(c.dir, "sa.pub")); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(c.dir, "certs"), 0o700); err != nil {
		return fmt.Errorf("create cert directory: %w", err)
	}
	return nil
}

// StartAPIServer (re)starts kube-apiserver on the cluster's port, keeping its
// certificate and keys, and waits for /readyz. Start calls it; tests that
// simulate an apiserver outage call it after StopAPIServer.
func (c *Cluster) StartAPIServer(ctx context.Context) error {
	if c.apiserver != nil {
		if ended, _ := c.apiserver.exited(); !ended {
			return errors.New("kube-apiserver is already running")
		}
	}
	args := []string{
		"--etcd-servers=" + c.etcdURL,
		"--bind-address=" + c.host,
		"--advertise-address=" + c.host,
		"--secure-port=" + strconv.Itoa(c.port),
		"--cert-dir=" + filepath.Join(c.dir, "certs"),
		"--authorization-mode=Node,RBAC",
		"--token-auth-file=" + filepath.Join(c.dir, "tokens.csv"),
		"--service-account-key-file=" + filepath.Join(c.dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(c.dir, "sa.key"),
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-cluster-ip-range=" + ServiceClusterIPRange,
		"--profiling=false",
		"--v=1",
	}
	if c.opts.ControllerManager == "" {
		// Nothing would create the default ServiceAccount of new namespaces.
		args = append(args, "--disable-admission-plugins=ServiceAccount")
	}
	args = append(args, c.opts.ExtraAPIServerArgs...)
	logName := fmt.Sprintf("kube-apiserver-%d.log", time.Now().UnixNano())
	p, err := startProcess("kube-apiserver", filepath.Join(c.dir, logName), c.binary, args...)
	if err != nil {
		return err
	}
	c.apiserver = p
	if err := c.waitReady(ctx); err != nil {
		return err
	}
	if c.kubeconfig == "" {
		return c.writeAdminConfig()
	}
	return nil
}

// StopAPIServer stops kube-apiserver, leaving etcd running.
func (c *Cluster) StopAPIServer() {
	if c.apiserver != nil {
		c.apiserver.stop(10 * time.Second)
	}
}

// waitReady polls /readyz until it answers 200, then loads the serving CA.
func (c *Cluster) waitReady(ctx context.Context) error {
	httpClient := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	defer httpClient.CloseIdleConnections()
	url := fmt.Sprintf("https://%s/readyz", c.APIServerAddr())
	err := poll(ctx, c.apiserver, "kube-apiserver", func() (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, fmt.Errorf("build readyz request: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+c.adminToken)
		resp, err := httpClient.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(filepath.Join(c.dir, "certs", "apiserver.crt"))
	if err != nil {
		return fmt.Errorf("read apiserver serving certificate: %w", err)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca) {
		return errors.New("apiserver serving certificate holds no PEM certificate")
	}
	c.caData = ca
	return nil
}

// writeAdminConfig writes the admin kubeconfig and builds the admin client.
func (c *Cluster) writeAdminConfig() error {
	c.restConfig = c.configForToken(c.adminToken)
	client, err := kubernetes.NewForConfig(c.restConfig)
	if err != nil {
		return fmt.Errorf("build admin client: %w", err)
	}
	c.client = client
	path := filepath.Join(c.dir, "admin.kubeconfig")
	if err := writeKubeconfig(path, c.restConfig); err != nil {
		return err
	}
	c.kubeconfig = path
	return nil
}

// configForToken returns a client configuration authenticating with token.
func (c *Cluster) configForToken(token string) *rest.Config {
	return &rest.Config{
		Host:            "https://" + c.APIServerAddr(),
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.caData},
		QPS:             100,
		Burst:           200,
	}
}

// Stop kills the controllers, kube-apiserver and etcd and removes their
// directories (Options.Dir stays). It is safe to call more than once.
func (c *Cluster) Stop() {
	for _, p := range c.controllers {
		p.stop(5 * time.Second)
	}
	if c.apiserver != nil {
		c.apiserver.stop(5 * time.Second)
	}
	if c.etcd != nil {
		c.etcd.stop(5 * time.Second)
	}
	dirs := []string{c.etcdDir}
	if !c.keepDir {
		dirs = append(dirs, c.dir)
	}
	for _, dir := range dirs {
		if dir != "" {
			if err := os.RemoveAll(dir); err != nil {
				slog.Warn("remove cluster directory", "dir", dir, "err", err)
			}
		}
	}
}

// Dir is the directory holding the cluster's logs, keys and kubeconfigs.
func (c *Cluster) Dir() string { return c.dir }

// Kubeconfig is the path of a kubeconfig file for the admin user.
func (c *Cluster) Kubeconfig() string { return c.kubeconfig }

// RESTConfig returns a copy of the admin client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restConfig) }

// Client is a clientset authenticated as the admin user.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// APIServerLog returns the tail of the current kube-apiserver log.
func (c *Cluster) APIServerLog() string { return c.apiserver.logTail(8000) }

// poll calls check every 100ms until it returns true, fails, the process
// exits, or ctx ends.
func poll(ctx context.Context, p *process, what string, check func() (bool, error)) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		done, err := check()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		if err := p.exitError(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w; log tail:\n%s", what, ctx.Err(), p.logTail(4000))
		case <-tick.C:
		}
	}
}

// freePorts returns n distinct TCP ports of host that were free a moment ago.
func freePorts(host string, n int) ([]int, error) {
	var ports []int
	var listeners []net.Listener
	defer func() {
		for _, l := range listeners {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		listeners = append(listeners, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
