package cluster

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// writeKubeconfig writes a kubeconfig for cfg's server, CA and bearer token.
func writeKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["tollgate-test"] = &clientcmdapi.Cluster{
		Server:                   cfg.Host,
		CertificateAuthorityData: cfg.CAData,
	}
	kc.AuthInfos["user"] = &clientcmdapi.AuthInfo{Token: cfg.BearerToken}
	kc.Contexts["tollgate-test"] = &clientcmdapi.Context{Cluster: "tollgate-test", AuthInfo: "user"}
	kc.CurrentContext = "tollgate-test"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}

// WriteKubeconfigForToken writes a kubeconfig that authenticates with token
// (e.g. a ServiceAccount token) and returns its path inside the cluster
// directory; it is removed by Stop.
func (c *Cluster) WriteKubeconfigForToken(token string) (string, error) {
	f, err := os.CreateTemp(c.dir, "token-*.kubeconfig")
	if err != nil {
		return "", fmt.Errorf("create kubeconfig file: %w", err)
	}
	path := f.Name()
	f.Close()
	if err := writeKubeconfig(path, c.configForToken(token)); err != nil {
		return "", err
	}
	return filepath.Clean(path), nil
}

// RESTConfigForToken returns a client configuration that authenticates with token.
func (c *Cluster) RESTConfigForToken(token string) *rest.Config {
	return c.configForToken(token)
}

// WriteAdminKubeconfigVia writes an admin kubeconfig whose server is
// hostPort (for example a proxy in front of the apiserver; the serving
// certificate is for 127.0.0.1) and returns its path inside the cluster
// directory.
func (c *Cluster) WriteAdminKubeconfigVia(hostPort string) (string, error) {
	cfg := c.configForToken(c.adminToken)
	cfg.Host = "https://" + hostPort
	f, err := os.CreateTemp(c.dir, "via-*.kubeconfig")
	if err != nil {
		return "", fmt.Errorf("create kubeconfig file: %w", err)
	}
	path := f.Name()
	f.Close()
	if err := writeKubeconfig(path, cfg); err != nil {
		return "", err
	}
	return filepath.Clean(path), nil
}

// APIServerAddr returns the apiserver's host:port.
func (c *Cluster) APIServerAddr() string { return net.JoinHostPort(c.host, strconv.Itoa(c.port)) }

// KubeconfigFor writes a kubeconfig for user, one of Options.Users, into the
// cluster directory and returns its path.
func (c *Cluster) KubeconfigFor(user string) (string, error) {
	token, ok := c.tokens[user]
	if !ok {
		return "", fmt.Errorf("no token user %q in the cluster options", user)
	}
	path := filepath.Join(c.dir, strings.NewReplacer(":", "-", "/", "-").Replace(user)+".kubeconfig")
	if err := writeKubeconfig(path, c.configForToken(token)); err != nil {
		return "", err
	}
	return path, nil
}
