package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tollgate/tollgate/test/cluster"
	"github.com/tollgate/tollgate/test/netsim"
)

// SessionOptions configure StartSession.
type SessionOptions struct {
	// Name is the benchmark's name ("bench-dataplane"): the make target,
	// the directory under $CACHE for results, and the doc section.
	Name string
	// Out overrides the results directory; Cache is $CACHE (empty: the
	// repository's .cache).
	Out, Cache string
	// Profile builds the decider and queuer with a pprof listener; KNP
	// builds kube-network-policies' agents.
	Profile, KNP bool
	// CRDs are installed in the cluster.
	CRDs []cluster.CRDSet
	// TopologyPrefix names the network namespaces.
	TopologyPrefix string
}

// Session is what every whole-path benchmark needs: binaries, a control
// plane, a topology, a loader, a work directory (kept as the failed run's
// logs when it fails) and the machine's description.
type Session struct {
	Name    string
	Root    string
	Out     string
	Work    string
	Machine *Machine
	Bins    Binaries
	Cluster *cluster.Cluster
	Topo    *netsim.Topology
	Loader  *Loader
}

// StartSession builds the binaries and starts the control plane. The
// caller must Close it, also when StartSession fails.
func StartSession(ctx context.Context, o SessionOptions) (*Session, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (network namespaces, nftables)")
	}
	s := &Session{Name: o.Name, Machine: NewMachine()}
	var err error
	if s.Root, err = RepoRoot(); err != nil {
		return s, err
	}
	if out, err := exec.CommandContext(ctx, "git", "-C", s.Root, "describe", "--always", "--dirty").Output(); err == nil {
		s.Machine.Code = strings.TrimSpace(string(out))
	}
	s.Out = o.Out
	if s.Out == "" {
		cache := o.Cache
		if cache == "" {
			cache = filepath.Join(s.Root, ".cache")
		}
		s.Out = filepath.Join(cache, o.Name)
	}
	if err := os.MkdirAll(s.Out, 0o755); err != nil {
		return s, err
	}
	if s.Work, err = os.MkdirTemp("", "tollgate-"+o.Name+"-"); err != nil {
		return s, err
	}
	Step("building the decider, queuer and accept-all program%s", map[bool]string{true: ", and kube-network-policies' agents", false: ""}[o.KNP])
	s.Bins, err = Build(ctx, BuildOptions{Root: s.Root, Dir: filepath.Join(s.Work, "bin"), Profile: o.Profile, KNP: o.KNP, Cache: o.Cache})
	if err != nil {
		return s, err
	}
	Step("starting etcd and kube-apiserver")
	if s.Cluster, err = cluster.Start(ctx, cluster.Options{CRDs: o.CRDs}); err != nil {
		return s, err
	}
	if s.Topo, err = netsim.New(o.TopologyPrefix); err != nil {
		return s, err
	}
	s.Loader, err = NewLoader(s.Cluster)
	return s, err
}

// Close removes the topology and stops the control plane. If *errp is set
// (the run failed) the work directory, with every process's log, is moved
// next to the results and *errp says where; otherwise it is removed.
func (s *Session) Close(errp *error) {
	if s.Topo != nil {
		if err := s.Topo.Close(); err != nil && *errp == nil {
			*errp = err
		}
	}
	if s.Cluster != nil {
		s.Cluster.Stop()
	}
	if s.Work == "" {
		return
	}
	if *errp != nil {
		os.RemoveAll(filepath.Join(s.Work, "bin"))
		logs := filepath.Join(s.Out, "failed-"+time.Now().Format("20060102-150405"))
		if os.Rename(s.Work, logs) == nil {
			*errp = fmt.Errorf("%w (logs: %s)", *errp, logs)
			return
		}
	}
	os.RemoveAll(s.Work)
}

// Finish stops the machine's clock, writes the raw results (config,
// machine and results as JSON) to the results directory, prints the
// markdown report and, when doc is set, regenerates the benchmark's
// section of that file under heading.
func (s *Session) Finish(config string, results any, markdown func() string, doc, heading string) error {
	s.Machine.Finish()
	raw, err := json.MarshalIndent(struct {
		Config  string
		Machine *Machine
		Results any
	}{config, s.Machine, results}, "", " ")
	if err != nil {
		return err
	}
	path := filepath.Join(s.Out, "results-"+time.Now().Format("20060102-150405")+".json")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		return err
	}
	md := markdown()
	fmt.Printf("\n%s\nraw results: %s\n", md, path)
	if doc == "" {
		return nil
	}
	if err := UpdateDoc(doc, s.Name, heading, md); err != nil {
		return err
	}
	fmt.Printf("updated %s\n", doc)
	return nil
}

// Step prints a progress line.
func Step(format string, args ...any) { fmt.Printf("==> "+format+"\n", args...) }

// Main is a benchmark command's main function: parse reads the flags, run
// runs with a context that ends on SIGINT or SIGTERM. It exits with 2 on
// bad flags and 1 when the run fails.
func Main(name string, parse func(args []string) error, run func(ctx context.Context) error) {
	err := parse(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err = run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
