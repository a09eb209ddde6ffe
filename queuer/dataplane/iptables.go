package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// IPTables runs iptables commands; the dataplane uses it only in ModeXT (and
// to clean up after an earlier xt run).
type IPTables interface {
	// Run runs iptables (ip6tables when ipv6 is true) with args. A non-zero
	// exit status is returned as an *IPTablesError.
	Run(ctx context.Context, ipv6 bool, args ...string) error
	// Restore feeds input to iptables-restore --noflush (ip6tables-restore
	// when ipv6 is true), which applies each table of input atomically.
	Restore(ctx context.Context, ipv6 bool, input string) error
}

// IPTablesError is a failed iptables command.
type IPTablesError struct {
	// Code is the exit status; iptables uses 1 for "no such rule or chain".
	Code int
	// Msg is the command line and what the command printed on stderr.
	Msg string
}

// Error implements error.
func (e *IPTablesError) Error() string {
	return fmt.Sprintf("%s (exit status %d)", e.Msg, e.Code)
}

// XTChain is the iptables chain, in table mangle, holding the rule that
// queues packets marked with XTMark.
const XTChain = "TOLLGATE"

// xtTable is the iptables table of XTChain. Its FORWARD and INPUT chains run
// at priority mangle (-150), right after our nft base chains.
const xtTable = "mangle"

// xtHooks are the built-in chains that jump to XTChain (OUTPUT for DNS
// answers from the node itself).
var xtHooks = []string{"FORWARD", "INPUT", "OUTPUT"}

// xtQueueRule is the rule (without "-A chain") that queues marked packets.
func xtQueueRule(cfg Config) []string {
	mark := fmt.Sprintf("0x%x/0x%x", XTMark, XTMark)
	r := []string{"-m", "mark", "--mark", mark, "-j", "NFQUEUE"}
	if cfg.QueueCount > 1 {
		last := int(cfg.FirstQueue) + int(cfg.QueueCount) - 1
		r = append(r, "--queue-balance", fmt.Sprintf("%d:%d", cfg.FirstQueue, last), "--queue-cpu-fanout")
	} else {
		r = append(r, "--queue-num", fmt.Sprint(cfg.FirstQueue))
	}
	if cfg.FailOpen {
		r = append(r, "--queue-bypass")
	}
	return r
}

// xtDNSRule is the rule (without "-A chain") that queues DNS answers.
func xtDNSRule(cfg Config) []string {
	mark := fmt.Sprintf("0x%x/0x%x", DNSMark, DNSMark)
	return []string{"-m", "mark", "--mark", mark, "-j", "NFQUEUE", "--queue-num", fmt.Sprint(cfg.DNSQueue), "--queue-bypass"}
}

// installXT makes, for both families, XTChain hold exactly the queue rule
// (replaced atomically by iptables-restore, so an old rule keeps queueing
// until the new one is in place) and makes FORWARD and INPUT jump to it
// first.
func installXT(ctx context.Context, ipt IPTables, cfg Config) error {
	input := fmt.Sprintf("*%s\n:%s - [0:0]\n-A %s %s\n-A %s %s\nCOMMIT\n",
		xtTable, XTChain, XTChain, strings.Join(xtQueueRule(cfg), " "), XTChain, strings.Join(xtDNSRule(cfg), " "))
	for _, v6 := range []bool{false, true} {
		if err := ipt.Restore(ctx, v6, input); err != nil {
			return fmt.Errorf("fill chain %s (ipv6=%t): %w", XTChain, v6, err)
		}
		for _, hook := range xtHooks {
			jump := []string{hook, "-j", XTChain}
			ok, err := ruleExists(ctx, ipt, v6, jump)
			if err != nil {
				return err
			}
			if ok {
				continue
			}
			if err := ipt.Run(ctx, v6, "-w", "-t", xtTable, "-I", hook, "1", "-j", XTChain); err != nil {
				return fmt.Errorf("jump from %s (ipv6=%t): %w", hook, v6, err)
			}
		}
	}
	return nil
}

// removeXT deletes the jumps to XTChain and the chain itself, in both
// families. Missing rules and chains are not errors.
func removeXT(ctx context.Context, ipt IPTables) error {
	for _, v6 := range []bool{false, true} {
		err := ipt.Run(ctx, v6, "-w", "-t", xtTable, "-S", XTChain)
		if isNotExist(err) {
			continue // no chain, so no jumps to it either
		}
		if err != nil {
			return fmt.Errorf("look up chain %s (ipv6=%t): %w", XTChain, v6, err)
		}
		for _, hook := range xtHooks {
			jump := []string{hook, "-j", XTChain}
			// Bounded: each round removes one duplicate jump.
			for range 16 {
				ok, err := ruleExists(ctx, ipt, v6, jump)
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				if err := ipt.Run(ctx, v6, append([]string{"-w", "-t", xtTable, "-D"}, jump...)...); err != nil {
					return fmt.Errorf("delete jump from %s (ipv6=%t): %w", hook, v6, err)
				}
			}
		}
		for _, op := range []string{"-F", "-X"} {
			if err := ipt.Run(ctx, v6, "-w", "-t", xtTable, op, XTChain); err != nil && !isNotExist(err) {
				return fmt.Errorf("iptables %s %s (ipv6=%t): %w", op, XTChain, v6, err)
			}
		}
	}
	return nil
}

// ruleExists runs iptables -C; rule starts with the chain name.
func ruleExists(ctx context.Context, ipt IPTables, v6 bool, rule []string) (bool, error) {
	err := ipt.Run(ctx, v6, append([]string{"-w", "-t", xtTable, "-C"}, rule...)...)
	if err == nil {
		return true, nil
	}
	if isNotExist(err) {
		return false, nil
	}
	return false, fmt.Errorf("check rule %v (ipv6=%t): %w", rule, v6, err)
}

// isNotExist reports whether err is iptables' exit status 1, which it uses
// for a missing rule or chain.
func isNotExist(err error) bool {
	var ie *IPTablesError
	return errors.As(err, &ie) && ie.Code == 1
}

// ExecIPTables runs the iptables binaries of one variant.
type ExecIPTables struct {
	// Variant is "nft", "legacy" or "" (whatever plain iptables is).
	Variant string
	// Paths of iptables, ip6tables, iptables-restore and ip6tables-restore.
	IPTables, IP6Tables, Restore4, Restore6 string
}

// NewExecIPTables finds the iptables binaries, preferring iptables-nft (whose
// rules live in nf_tables beside ours), then iptables-legacy, then plain
// iptables. All four binaries of a variant must exist.
func NewExecIPTables() (*ExecIPTables, error) {
	var errs []error
	for _, variant := range []string{"nft", "legacy", ""} {
		suffix := ""
		if variant != "" {
			suffix = "-" + variant
		}
		names := []string{"iptables" + suffix, "ip6tables" + suffix, "iptables" + suffix + "-restore", "ip6tables" + suffix + "-restore"}
		paths := make([]string, len(names))
		var err error
		for i, n := range names {
			if paths[i], err = exec.LookPath(n); err != nil {
				break
			}
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		return &ExecIPTables{Variant: variant, IPTables: paths[0], IP6Tables: paths[1], Restore4: paths[2], Restore6: paths[3]}, nil
	}
	return nil, fmt.Errorf("dataplane: no iptables binaries: %w", errors.Join(errs...))
}

// Run implements IPTables.
func (e *ExecIPTables) Run(ctx context.Context, ipv6 bool, args ...string) error {
	bin := e.IPTables
	if ipv6 {
		bin = e.IP6Tables
	}
	return runCommand(exec.CommandContext(ctx, bin, args...))
}

// Restore implements IPTables.
func (e *ExecIPTables) Restore(ctx context.Context, ipv6 bool, input string) error {
	bin := e.Restore4
	if ipv6 {
		bin = e.Restore6
	}
	cmd := exec.CommandContext(ctx, bin, "-w", "--noflush")
	cmd.Stdin = strings.NewReader(input)
	return runCommand(cmd)
}

func runCommand(cmd *exec.Cmd) error {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return &IPTablesError{Code: ee.ExitCode(),
			Msg: strings.TrimSpace(strings.Join(cmd.Args, " ") + ": " + stderr.String())}
	}
	return fmt.Errorf("%s: %w", strings.Join(cmd.Args, " "), err)
}

// checkXT lists what is missing of the rules installXT makes.
func checkXT(ctx context.Context, ipt IPTables, cfg Config) ([]string, error) {
	var problems []string
	for _, v6 := range []bool{false, true} {
		bin := "iptables"
		if v6 {
			bin = "ip6tables"
		}
		err := ipt.Run(ctx, v6, "-w", "-t", xtTable, "-S", XTChain)
		if isNotExist(err) {
			problems = append(problems, fmt.Sprintf("%s -t %s chain %s is missing", bin, xtTable, XTChain))
			continue // and so are the jumps to it
		}
		if err != nil {
			return nil, fmt.Errorf("look up chain %s (ipv6=%t): %w", XTChain, v6, err)
		}
		rules := [][]string{append([]string{XTChain}, xtQueueRule(cfg)...), append([]string{XTChain}, xtDNSRule(cfg)...)}
		for _, hook := range xtHooks {
			rules = append(rules, []string{hook, "-j", XTChain})
		}
		for _, r := range rules {
			ok, err := ruleExists(ctx, ipt, v6, r)
			if err != nil {
				return nil, err
			}
			if !ok {
				problems = append(problems, fmt.Sprintf("%s -t %s rule %q is missing", bin, xtTable, strings.Join(r, " ")))
			}
		}
	}
	return problems, nil
}
