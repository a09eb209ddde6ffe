package cluster

import (
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Connect returns a Cluster for an apiserver this process did not start (the
// local cluster of `make cluster-up`, say), reached with the admin kubeconfig
// at path. The client side works as for a started cluster (Kubectl, Client,
// RESTConfig, InstallCRDs); Stop only removes the kubectl cache.
func Connect(kubeconfig string) (*Cluster, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("build client for %s: %w", kubeconfig, err)
	}
	dir, err := os.MkdirTemp("", "tollgate-kubectl-")
	if err != nil {
		return nil, fmt.Errorf("create kubectl cache directory: %w", err)
	}
	return &Cluster{dir: dir, kubeconfig: kubeconfig, restConfig: cfg, client: client, caData: cfg.CAData}, nil
}
