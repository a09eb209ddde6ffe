// Command netserver is the test pods' only program, in a FROM-scratch image
// (make e2e-images): it serves and probes TCP, UDP and SCTP with
// test/netsim's servers and probes, from inside a real pod.
//
//	netserver serve --name NS/POD --ports 80,81
//	    On each port: a TCP server that greets every connection with the
//	    name and closes it, a UDP server that answers every datagram with
//	    the name, and an SCTP responder (INIT answered by INIT-ACK on raw
//	    sockets when the kernel has no SCTP, as on our CI kernels; needs
//	    CAP_NET_RAW, which a container has by default). Runs until SIGTERM.
//
//	netserver probe [--timeout 1s] PROTO/IP/PORT...
//	    Probes every target at once from the pod and prints one JSON object
//	    per target, in order: {"target", "reachable", "server", "reason"}.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tollgate/tollgate/test/netsim"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "probe":
		err = probe(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "netserver:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: netserver serve --name NAME --ports P,P... | netserver probe [--timeout D] PROTO/IP/PORT...")
	os.Exit(2)
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	name := fs.String("name", "", "the name every answer carries (default: the hostname)")
	portList := fs.String("ports", "80,81", "ports to serve on, comma-separated")
	_ = fs.Parse(args)
	if *name == "" {
		h, err := os.Hostname()
		if err != nil {
			return err
		}
		*name = h
	}
	topo, err := netsim.New("pod")
	if err != nil {
		return err
	}
	defer topo.Close()
	host := netsim.Local(*name)
	for _, p := range strings.Split(*portList, ",") {
		port, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
		if err != nil {
			return fmt.Errorf("port %q: %w", p, err)
		}
		for _, serve := range []func(netsim.Host, uint16) error{topo.ServeTCP, topo.ServeUDP, topo.ServeSCTP} {
			if err := serve(host, uint16(port)); err != nil {
				return err
			}
		}
	}
	fmt.Printf("%s serving tcp, udp and sctp on %s\n", *name, *portList)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	return nil
}

// result is one probe's outcome, as printed.
type result struct {
	Target    string `json:"target"`
	Reachable bool   `json:"reachable"`
	Server    string `json:"server,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

func probe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ExitOnError)
	timeout := fs.Duration("timeout", time.Second, "how long each probe waits for an answer")
	_ = fs.Parse(args)
	results := make([]result, fs.NArg())
	var wg sync.WaitGroup
	var errs []error
	var mu sync.Mutex
	for i, target := range fs.Args() {
		proto, addr, port, err := parseTarget(target)
		if err != nil {
			return err
		}
		wg.Go(func() {
			r, err := netsim.ProbeDetail(netsim.Local(""), addr, port, proto, *timeout)
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("probe %s: %w", target, err))
				mu.Unlock()
				return
			}
			results[i] = result{Target: target, Reachable: r.Reachable, Server: r.Server, Reason: r.Reason}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

// parseTarget splits PROTO/IP/PORT.
func parseTarget(s string) (netsim.Proto, netip.Addr, uint16, error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 {
		return "", netip.Addr{}, 0, fmt.Errorf("target %q is not PROTO/IP/PORT", s)
	}
	proto := netsim.Proto(parts[0])
	switch proto {
	case netsim.TCP, netsim.UDP, netsim.SCTP:
	default:
		return "", netip.Addr{}, 0, fmt.Errorf("target %q: unknown protocol", s)
	}
	addr, err := netip.ParseAddr(parts[1])
	if err != nil {
		return "", netip.Addr{}, 0, fmt.Errorf("target %q: %w", s, err)
	}
	port, err := strconv.ParseUint(parts[2], 10, 16)
	if err != nil {
		return "", netip.Addr{}, 0, fmt.Errorf("target %q: %w", s, err)
	}
	return proto, addr, uint16(port), nil
}
