// Command tollgate-contract is the decider conformance kit: it checks a
// running decider on a Unix socket against the contract of
// docs/decider-contract.md and prints a PASS, FAIL or SKIP line per
// requirement. It exits 0 when nothing failed, 1 when a requirement
// failed, and 2 when it could not run (bad flags or expectations, or a
// decider that never became SERVING).
//
//	tollgate-contract --socket /run/my-decider.sock --expect expectations.yaml
//
// Without --expect the decider must be loaded with Tollgate's example
// cluster and policies (deploy/examples). Install it with
//
//	go install github.com/tollgate/tollgate/cmd/tollgate-contract@latest
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tollgate/tollgate/test/contract"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errUsage is a flag or expectations problem (exit code 2).
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tollgate-contract", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", "", "Unix socket of the decider under test (required)")
	expect := fs.String("expect", "", "expectations file (YAML or JSON) saying what the decider has loaded; empty: Tollgate's examples (deploy/examples)")
	node := fs.String("node", "", "node name for Watch requests (overrides the expectations' node)")
	runRE := fs.String("run", "", "check only the requirements whose name matches this regular expression")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for the decider to report SERVING")
	callTimeout := fs.Duration("call-timeout", 10*time.Second, "deadline of each call")
	list := fs.Bool("list", false, "list the requirements and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: tollgate-contract --socket PATH [--expect FILE] [flags]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *list {
		for _, r := range contract.Requirements {
			fmt.Fprintf(stdout, "%-20s %s\n", r.Name, r.Rule)
		}
		return 0
	}
	report, err := check(ctx, *socket, *expect, *node, *runRE, *wait, *callTimeout)
	if err != nil {
		fmt.Fprintf(stderr, "tollgate-contract: %v\n", err)
		if errors.Is(err, errUsage) {
			fs.Usage()
		}
		return 2
	}
	report.Print(stdout)
	if report.Failed() {
		return 1
	}
	return 0
}

func check(ctx context.Context, socket, expect, node, runRE string, wait, callTimeout time.Duration) (contract.Report, error) {
	if socket == "" {
		return nil, fmt.Errorf("%w: --socket is required", errUsage)
	}
	exp := contract.Examples()
	if expect != "" {
		var err error
		if exp, err = contract.LoadExpectations(expect); err != nil {
			return nil, err
		}
	}
	if node != "" {
		exp.Node = node
	}
	opts := contract.Options{CallTimeout: callTimeout}
	if runRE != "" {
		re, err := regexp.Compile(runRE)
		if err != nil {
			return nil, fmt.Errorf("%w: --run: %v", errUsage, err)
		}
		opts.Run = re
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("decider socket %s: %w", socket, err)
	}
	defer conn.Close()
	if err := contract.WaitServing(ctx, conn, wait); err != nil {
		return nil, fmt.Errorf("decider at %s: %w", socket, err)
	}
	return contract.Check(ctx, conn, exp, opts), nil
}
