package dataplane

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// FakeIPTables is an in-memory IPTables for tests. It models the subset of
// iptables the dataplane uses (-C, -I, -A, -D, -S, -N, -F, -X and
// iptables-restore --noflush with chain declarations and -A) with iptables'
// exit statuses, and records every call.
type FakeIPTables struct {
	mu     sync.Mutex
	fams   [2]map[string]*fakeXTTable // [0] IPv4, [1] IPv6
	calls  []string
	failOn map[string]error
}

type fakeXTTable struct {
	chains map[string][]string // chain -> rule specs (args joined by spaces)
	user   map[string]bool     // user-defined chains
}

var fakeBuiltins = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"raw":    {"PREROUTING", "OUTPUT"},
}

var fakeTargets = map[string]bool{"ACCEPT": true, "DROP": true, "RETURN": true, "NFQUEUE": true, "MARK": true}

// NewFakeIPTables returns an empty FakeIPTables.
func NewFakeIPTables() *FakeIPTables {
	return &FakeIPTables{fams: [2]map[string]*fakeXTTable{{}, {}}, failOn: map[string]error{}}
}

// FailOn makes every later call whose recorded form (see Calls) starts with
// prefix return err.
func (f *FakeIPTables) FailOn(prefix string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failOn[prefix] = err
}

// Calls returns the calls so far, as "iptables ARGS", "ip6tables ARGS",
// "iptables-restore" or "ip6tables-restore".
func (f *FakeIPTables) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *FakeIPTables) record(ipv6 bool, name string, args []string) error {
	if ipv6 {
		name = "ip6" + strings.TrimPrefix(name, "ip")
	}
	call := strings.TrimSpace(name + " " + strings.Join(args, " "))
	f.calls = append(f.calls, call)
	for prefix, err := range f.failOn {
		if strings.HasPrefix(call, prefix) {
			return err
		}
	}
	return nil
}

func fam(ipv6 bool) int {
	if ipv6 {
		return 1
	}
	return 0
}

func (f *FakeIPTables) table(ipv6 bool, name string) (*fakeXTTable, error) {
	builtins, ok := fakeBuiltins[name]
	if !ok {
		return nil, &IPTablesError{Code: 3, Msg: "fake: unknown table " + name}
	}
	t := f.fams[fam(ipv6)][name]
	if t == nil {
		t = &fakeXTTable{chains: map[string][]string{}, user: map[string]bool{}}
		for _, c := range builtins {
			t.chains[c] = nil
		}
		f.fams[fam(ipv6)][name] = t
	}
	return t, nil
}

// Run implements IPTables.
func (f *FakeIPTables) Run(_ context.Context, ipv6 bool, args ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(ipv6, "iptables", args); err != nil {
		return err
	}
	table := "filter"
	var rest []string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-w":
		case "-t":
			if i+1 == len(args) {
				return &IPTablesError{Code: 2, Msg: "fake: -t without table"}
			}
			table = args[i+1]
			i++
		default:
			rest = append(rest, args[i])
		}
	}
	if len(rest) < 2 {
		return &IPTablesError{Code: 2, Msg: fmt.Sprintf("fake: bad command %q", args)}
	}
	t, err := f.table(ipv6, table)
	if err != nil {
		return err
	}
	op, chain, spec := rest[0], rest[1], rest[2:]
	rules, exists := t.chains[chain]
	noChain := &IPTablesError{Code: 1, Msg: "fake: no chain " + chain}
	switch op {
	case "-N":
		if exists {
			return &IPTablesError{Code: 1, Msg: "fake: chain exists " + chain}
		}
		t.chains[chain] = nil
		t.user[chain] = true
		return nil
	case "-S", "-F", "-X":
		if !exists {
			return noChain
		}
		switch op {
		case "-F":
			t.chains[chain] = nil
		case "-X":
			if !t.user[chain] || len(rules) > 0 || t.referenced(chain) {
				return &IPTablesError{Code: 4, Msg: "fake: cannot delete chain " + chain}
			}
			delete(t.chains, chain)
			delete(t.user, chain)
		}
		return nil
	}
	if !exists {
		return noChain
	}
	if err := t.checkTarget(spec); err != nil {
		return err
	}
	switch op {
	case "-C", "-D":
		i := slices.Index(rules, strings.Join(spec, " "))
		if i < 0 {
			return &IPTablesError{Code: 1, Msg: "fake: no such rule"}
		}
		if op == "-D" {
			t.chains[chain] = slices.Delete(rules, i, i+1)
		}
	case "-A":
		t.chains[chain] = append(rules, strings.Join(spec, " "))
	case "-I":
		pos := 1
		if len(spec) > 0 {
			if n, err := strconv.Atoi(spec[0]); err == nil {
				pos, spec = n, spec[1:]
			}
		}
		if pos < 1 || pos > len(rules)+1 {
			return &IPTablesError{Code: 1, Msg: "fake: index out of range"}
		}
		t.chains[chain] = slices.Insert(rules, pos-1, strings.Join(spec, " "))
	default:
		return &IPTablesError{Code: 2, Msg: "fake: unsupported command " + op}
	}
	return nil
}

// checkTarget fails like iptables (status 2) when spec jumps to a chain that
// does not exist.
func (t *fakeXTTable) checkTarget(spec []string) error {
	for i, a := range spec {
		if a == "-j" && i+1 < len(spec) && !fakeTargets[spec[i+1]] {
			if _, ok := t.chains[spec[i+1]]; !ok {
				return &IPTablesError{Code: 2, Msg: "fake: no target " + spec[i+1]}
			}
		}
	}
	return nil
}

func (t *fakeXTTable) referenced(chain string) bool {
	for _, rules := range t.chains {
		for _, r := range rules {
			if strings.HasSuffix(r, "-j "+chain) || strings.Contains(r, "-j "+chain+" ") {
				return true
			}
		}
	}
	return false
}

// Restore implements IPTables, as iptables-restore --noflush: a ":CHAIN"
// line creates or flushes the chain, "-A" appends, and each table's changes
// apply at its COMMIT or not at all.
func (f *FakeIPTables) Restore(_ context.Context, ipv6 bool, input string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record(ipv6, "iptables-restore", nil); err != nil {
		return err
	}
	var cur *fakeXTTable
	var name string
	for n, line := range strings.Split(input, "\n") {
		line = strings.TrimSpace(line)
		bad := func(msg string) error {
			return &IPTablesError{Code: 2, Msg: fmt.Sprintf("fake: restore line %d %q: %s", n+1, line, msg)}
		}
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			t, err := f.table(ipv6, line[1:])
			if err != nil {
				return err
			}
			name, cur = line[1:], t.clone()
		case cur == nil:
			return bad("outside a table")
		case line == "COMMIT":
			f.fams[fam(ipv6)][name] = cur
			cur = nil
		case strings.HasPrefix(line, ":"):
			chain := strings.Fields(line[1:])[0]
			if _, ok := cur.chains[chain]; !ok {
				cur.user[chain] = true
			}
			cur.chains[chain] = nil
		case strings.HasPrefix(line, "-A "):
			fields := strings.Fields(line)
			if len(fields) < 2 {
				return bad("no chain")
			}
			if _, ok := cur.chains[fields[1]]; !ok {
				return bad("no such chain")
			}
			if err := cur.checkTarget(fields[2:]); err != nil {
				return err
			}
			cur.chains[fields[1]] = append(cur.chains[fields[1]], strings.Join(fields[2:], " "))
		default:
			return bad("unsupported")
		}
	}
	if cur != nil {
		return &IPTablesError{Code: 2, Msg: "fake: restore input lacks COMMIT"}
	}
	return nil
}

func (t *fakeXTTable) clone() *fakeXTTable {
	c := &fakeXTTable{chains: map[string][]string{}, user: map[string]bool{}}
	for k, v := range t.chains {
		c.chains[k] = slices.Clone(v)
	}
	for k, v := range t.user {
		c.user[k] = v
	}
	return c
}

// Dump returns the rules in iptables-save style, families and tables sorted,
// listing user chains and every rule; tables with no rules and no user chains
// are left out.
func (f *FakeIPTables) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for i, header := range []string{"# iptables", "# ip6tables"} {
		b.WriteString(header + "\n")
		names := make([]string, 0, len(f.fams[i]))
		for n := range f.fams[i] {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			t := f.fams[i][n]
			chains := make([]string, 0, len(t.chains))
			empty := true
			for c, rules := range t.chains {
				chains = append(chains, c)
				if len(rules) > 0 || t.user[c] {
					empty = false
				}
			}
			if empty {
				continue
			}
			slices.Sort(chains)
			fmt.Fprintf(&b, "*%s\n", n)
			for _, c := range chains {
				if t.user[c] {
					fmt.Fprintf(&b, ":%s\n", c)
				}
			}
			for _, c := range chains {
				for _, r := range t.chains[c] {
					fmt.Fprintf(&b, "-A %s %s\n", c, r)
				}
			}
			b.WriteString("COMMIT\n")
		}
	}
	return b.String()
}
