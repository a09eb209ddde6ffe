// Package explain is `decider explain`: a one-shot command that answers,
// from manifests or from a cluster, why a connection is allowed or denied,
// which policies select a pod, who reaches whom, and what a policy change
// would change, over the same loader, informers and engine as the decider.
//
// See docs/explain.md for the command line and the JSON output.
package explain

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/tollgate/tollgate/decider/engine"
	"github.com/tollgate/tollgate/decider/source"
	"github.com/tollgate/tollgate/internal/version"
)

// Exit statuses.
const (
	ExitAllowed = 0 // every connection shown is allowed (or none is shown)
	ExitDenied  = 1 // some connection shown is denied (after --with: would be denied)
	ExitUsage   = 2 // bad flags or unreadable input
)

const usage = `usage: decider explain [--manifests PATH|- | --kubeconfig FILE] MODE [--with FILE]... [-o table|json]

Modes:
  --from NS/POD|IP[,...] --to NS/POD|IP[,...] --port PORT[,...]
        the verdict of each connection and, per direction, the walk through
        the tiers (admin, NetworkPolicy, baseline, default)
  --pod NS/POD
        every policy and rule that selects the pod, and the peers they admit
  --matrix NS[,...] --port PORT[,...]
        who reaches whom among the pods of the namespaces

PORT is 80/TCP, 53/UDP, 9000/SCTP, 80 (TCP) or ICMP. With --with, the given
policies are added (or replace those of the same kind, namespace and name)
and only the connections whose verdict would change are shown, before and
after. Without --manifests or --kubeconfig, the in-cluster configuration is
used. Exit status: 0 every connection shown is allowed, 1 one is denied,
2 usage or input error.

Flags:
`

// options are the parsed command line.
type options struct {
	manifests, kubeconfig string
	timeout               time.Duration
	from, to              []string
	ports                 []portSpec
	pod                   string
	matrix                []string
	with                  []string
	output                string
	viaService            bool
}

type portSpec struct {
	proto engine.Protocol
	port  uint16
}

func list(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseArgs(args []string, stderr io.Writer) (options, error) {
	o := options{output: "table"}
	fs := flag.NewFlagSet("decider explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.manifests, "manifests", "", "read objects from this directory of manifests, this file, or - for standard input")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "list the objects once from the cluster of this kubeconfig")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait for the cluster's objects")
	fs.Func("from", "source pods (NS/POD) or IPs, comma-separated", func(s string) error { o.from = append(o.from, list(s)...); return nil })
	fs.Func("to", "destination pods (NS/POD) or IPs, comma-separated", func(s string) error { o.to = append(o.to, list(s)...); return nil })
	fs.Func("port", "destination ports: 80/TCP, 53/UDP, 80 (TCP), ICMP; comma-separated", func(s string) error {
		for _, f := range list(s) {
			p, err := parsePort(f)
			if err != nil {
				return err
			}
			o.ports = append(o.ports, p)
		}
		return nil
	})
	fs.StringVar(&o.pod, "pod", "", "list the policies that select this pod (NS/POD)")
	fs.Func("matrix", "namespaces whose pods to cross, comma-separated", func(s string) error { o.matrix = append(o.matrix, list(s)...); return nil })
	fs.Func("with", "what-if: policies to add or replace (a manifest file; repeatable)", func(s string) error { o.with = append(o.with, s); return nil })
	fs.BoolVar(&o.viaService, "via-service", false, "the connections go through a service address (a pod reaching itself is then subject to policy)")
	fs.StringVar(&o.output, "o", "table", "output format: table or json")
	fs.StringVar(&o.output, "output", "table", "output format: table or json")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	flows := len(o.from) > 0 || len(o.to) > 0
	modes := 0
	for _, set := range []bool{flows, o.pod != "", len(o.matrix) > 0} {
		if set {
			modes++
		}
	}
	switch {
	case modes != 1:
		return o, errors.New("give exactly one of --from/--to, --pod or --matrix")
	case flows && (len(o.from) == 0 || len(o.to) == 0):
		return o, errors.New("--from and --to go together")
	case o.pod == "" && len(o.ports) == 0:
		return o, errors.New("--port is required with --from/--to and --matrix")
	case o.pod != "" && (len(o.ports) > 0 || len(o.with) > 0):
		return o, errors.New("--pod takes neither --port nor --with")
	case o.manifests != "" && o.kubeconfig != "":
		return o, errors.New("--manifests and --kubeconfig are mutually exclusive")
	case o.output != "table" && o.output != "json":
		return o, fmt.Errorf("-o %q: want table or json", o.output)
	}
	return o, nil
}

// parsePort reads "80/TCP", "80" (TCP), "53/udp" or "ICMP".
func parsePort(s string) (portSpec, error) {
	if strings.EqualFold(s, "ICMP") {
		return portSpec{proto: engine.ProtocolICMP}, nil
	}
	num, proto, _ := strings.Cut(s, "/")
	p := portSpec{proto: engine.ProtocolTCP}
	switch strings.ToUpper(proto) {
	case "", "TCP":
	case "UDP":
		p.proto = engine.ProtocolUDP
	case "SCTP":
		p.proto = engine.ProtocolSCTP
	default:
		return p, fmt.Errorf("port %q: protocol must be TCP, UDP or SCTP", s)
	}
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil {
		return p, fmt.Errorf("port %q: want a number from 0 to 65535", s)
	}
	p.port = uint16(n)
	return p, nil
}

// Main runs `decider explain` with args (the words after "explain") and
// returns the exit status.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	o, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return ExitAllowed
	}
	if err != nil {
		fmt.Fprintf(stderr, "decider explain: %v\n", err)
		return ExitUsage
	}
	doc, denied, err := explain(ctx, o, stdin, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "decider explain: %v\n", err)
		return ExitUsage
	}
	if o.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(doc)
	} else {
		err = writeTable(stdout, doc)
	}
	if err != nil {
		fmt.Fprintf(stderr, "decider explain: %v\n", err)
		return ExitUsage
	}
	if denied {
		return ExitDenied
	}
	return ExitAllowed
}

// explain loads the objects, answers the mode and reports whether a
// connection shown is denied.
func explain(ctx context.Context, o options, stdin io.Reader, stderr io.Writer) (Document, bool, error) {
	in, err := load(ctx, o, stdin, stderr)
	if err != nil {
		return Document{}, false, err
	}
	snap := engine.Compile(in)
	for _, w := range snap.Warnings() {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if o.pod != "" {
		ref, err := podRef(o.pod)
		if err != nil {
			return Document{}, false, err
		}
		pp, ok := snap.PodPolicies(ref)
		if !ok {
			return Document{}, false, notFound(o.pod)
		}
		return Document{Version: Version, Mode: "pod", Pod: podDoc(pp)}, false, nil
	}

	mode, connections := "flows", flowTuples
	if len(o.matrix) > 0 {
		mode, connections = "matrix", matrixTuples
	}
	tuples, pods, err := connections(snap, o)
	if err != nil {
		return Document{}, false, err
	}
	doc := Document{Version: Version, Mode: mode}
	if len(o.with) > 0 {
		after, err := withPolicies(in, o.with, stderr, snap.Warnings())
		if err != nil {
			return Document{}, false, err
		}
		doc.WhatIf = whatIf(snap, after, tuples, o.with)
		for _, c := range doc.WhatIf.Changes {
			if c.After.Verdict == "deny" {
				return doc, true, nil
			}
		}
		return doc, false, nil
	}
	denied := false
	if mode == "flows" {
		for _, t := range tuples {
			f := Flow{Connection: connection(snap, t), Result: result(snap.Trace(t))}
			denied = denied || f.Verdict == "deny"
			doc.Flows = append(doc.Flows, f)
		}
		return doc, denied, nil
	}
	// The tuples come port by port, row by row.
	for i, p := range o.ports {
		m := Matrix{Protocol: p.proto.String(), Port: p.port, Pods: pods, Verdicts: make([][]string, len(pods))}
		for r := range pods {
			m.Verdicts[r] = make([]string, len(pods))
			for c := range pods {
				t := tuples[(i*len(pods)+r)*len(pods)+c]
				allowed := snap.Decide(t).Allowed
				denied = denied || !allowed
				m.Verdicts[r][c] = verdict(allowed)
			}
		}
		doc.Matrices = append(doc.Matrices, m)
	}
	return doc, denied, nil
}

// load reads the objects from the manifests, the kubeconfig's cluster, or
// the cluster the command runs in.
func load(ctx context.Context, o options, stdin io.Reader, stderr io.Writer) (engine.Input, error) {
	if o.manifests != "" {
		var in engine.Input
		var warnings []source.Warning
		var err error
		if o.manifests == "-" {
			data, rerr := io.ReadAll(stdin)
			if rerr != nil {
				return in, fmt.Errorf("read standard input: %w", rerr)
			}
			in, warnings, err = source.LoadBytes("<stdin>", data)
		} else {
			in, warnings, err = source.LoadPath(o.manifests)
		}
		for _, w := range warnings {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
		return in, err
	}
	var rc *rest.Config
	var err error
	if o.kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	} else if rc, err = rest.InClusterConfig(); err != nil {
		err = fmt.Errorf("not running in a cluster and neither --manifests nor --kubeconfig was given: %w", err)
	}
	if err != nil {
		return engine.Input{}, err
	}
	rc.UserAgent = "tollgate-decider-explain/" + version.Version
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	k, err := source.NewKube(rc, source.KubeOptions{Logger: log})
	if err != nil {
		return engine.Input{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	in, err := k.Once(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("the cluster's objects did not all arrive within --timeout %s (see the messages above: "+
			"may this identity list pods, namespaces, nodes and networkpolicies?): %w", o.timeout, err)
	}
	return in, err
}

func podRef(s string) (engine.PodRef, error) {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return engine.PodRef{}, fmt.Errorf("%q: want NAMESPACE/POD", s)
	}
	return engine.PodRef{Namespace: ns, Name: name}, nil
}

func notFound(pod string) error {
	return fmt.Errorf("pod %s not found (or not subject to policy: host network, finished, or without an IP)", pod)
}

// endpointIPs resolves NS/POD to the pod's addresses, or an IP to itself.
func endpointIPs(snap *engine.Snapshot, pods []engine.PodInfo, s string) ([]netip.Addr, error) {
	if ip, err := netip.ParseAddr(s); err == nil {
		return []netip.Addr{ip.Unmap()}, nil
	}
	ref, err := podRef(s)
	if err != nil {
		return nil, fmt.Errorf("%q: want NAMESPACE/POD or an IP address", s)
	}
	i := slices.IndexFunc(pods, func(p engine.PodInfo) bool { return p.Ref == ref })
	if i < 0 {
		return nil, notFound(s)
	}
	return pods[i].IPs, nil
}

// pair picks the addresses of one connection: the first of from's that
// has a destination address of its family, and that address.
func pair(from, to []netip.Addr) (netip.Addr, netip.Addr, bool) {
	for _, f := range from {
		for _, t := range to {
			if f.Is4() == t.Is4() {
				return f, t, true
			}
		}
	}
	return netip.Addr{}, netip.Addr{}, false
}

// flowTuples lists every --from, --to and --port combination.
func flowTuples(snap *engine.Snapshot, o options) ([]engine.Tuple, []string, error) {
	pods := snap.Pods()
	var out []engine.Tuple
	for _, f := range o.from {
		src, err := endpointIPs(snap, pods, f)
		if err != nil {
			return nil, nil, err
		}
		for _, t := range o.to {
			dst, err := endpointIPs(snap, pods, t)
			if err != nil {
				return nil, nil, err
			}
			s, d, ok := pair(src, dst)
			if !ok {
				return nil, nil, fmt.Errorf("%s and %s have no address family in common", f, t)
			}
			for _, p := range o.ports {
				out = append(out, engine.Tuple{Src: s, Dst: d, Proto: p.proto, DstPort: p.port, ViaService: o.viaService})
			}
		}
	}
	return out, nil, nil
}

// matrixTuples lists, port by port and row by row, every connection
// between the pods of the --matrix namespaces, and names the pods.
func matrixTuples(snap *engine.Snapshot, o options) ([]engine.Tuple, []string, error) {
	var pods []engine.PodInfo
	for _, ns := range o.matrix {
		n := len(pods)
		for _, p := range snap.Pods() {
			if p.Ref.Namespace == ns {
				pods = append(pods, p)
			}
		}
		if len(pods) == n {
			return nil, nil, fmt.Errorf("namespace %s has no pods subject to policy", ns)
		}
	}
	names := make([]string, len(pods))
	for i, p := range pods {
		names[i] = podName(p.Ref)
	}
	var out []engine.Tuple
	for _, port := range o.ports {
		for _, from := range pods {
			for _, to := range pods {
				s, d, ok := pair(from.IPs, to.IPs)
				if !ok {
					return nil, nil, fmt.Errorf("%s and %s have no address family in common", podName(from.Ref), podName(to.Ref))
				}
				out = append(out, engine.Tuple{Src: s, Dst: d, Proto: port.proto, DstPort: port.port, ViaService: o.viaService})
			}
		}
	}
	return out, names, nil
}
