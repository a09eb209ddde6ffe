// Package netpol runs Kubernetes' "[sig-network] Netpol" e2e specs
// (k8s.io/kubernetes/test/e2e/network/netpol) without the rest of e2e.test.
//
// It is not part of the Tollgate module (testdata/ is invisible to the go
// command there): hack/referee/build.sh copies it into the wrapper module of
// hack/kube-apiserver/build.sh, which builds against the same
// k8s.io/kubernetes release as the cluster, and compiles it with
// `go test -c`. The binary takes e2e.test's flags (--kubeconfig,
// --ginkgo.focus, --ginkgo.junit-report, ...).
package netpol

import (
	"flag"
	"os"
	"testing"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"

	"k8s.io/kubernetes/test/e2e/framework"
	// On a failure, dump the events and pods of the spec's namespaces.
	_ "k8s.io/kubernetes/test/e2e/framework/debug/init"
	// The specs.
	_ "k8s.io/kubernetes/test/e2e/network/netpol"
)

// TestMain registers and reads the e2e framework's flags, as e2e.test does.
func TestMain(m *testing.M) {
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	flag.Parse()
	framework.AfterReadingAllFlags(&framework.TestContext)
	os.Exit(m.Run())
}

// TestNetpol runs the registered specs through Ginkgo with the framework's
// configuration.
func TestNetpol(t *testing.T) {
	gomega.RegisterFailHandler(framework.Fail)
	suiteConfig, reporterConfig := framework.CreateGinkgoConfig()
	ginkgo.RunSpecs(t, "Kubernetes e2e suite: Netpol", suiteConfig, reporterConfig)
}
