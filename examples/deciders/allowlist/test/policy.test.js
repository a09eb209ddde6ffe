'use strict';
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const path = require('node:path');
const ip = require('../lib/ip');
const policy = require('../lib/policy');

const base = policy.compile(fs.readFileSync(path.join(__dirname, '../contract/base.json'), 'utf8'));
const changed = policy.compile(fs.readFileSync(path.join(__dirname, '../contract/changed.json'), 'utf8'));

function conn(src, dst, protocol = 'TCP', port = 80, viaService = false) {
  return { src: ip.parse(src), dst: ip.parse(dst), protocol, port, viaService };
}

test('decide: ingress allowlist, egress allowlist, defaults', () => {
  for (const [c, allow, dirs] of [
    [conn('10.99.1.1', '10.99.1.2'), true, ['EGRESS:DEFAULT:ALLOW', 'INGRESS:NETWORK_POLICY:ALLOW']],
    [conn('10.99.1.3', '10.99.1.2'), false, ['EGRESS:NETWORK_POLICY:ALLOW', 'INGRESS:NETWORK_POLICY:DENY']],
    [conn('10.99.1.1', '10.99.1.2', 'TCP', 81), false, ['EGRESS:DEFAULT:ALLOW', 'INGRESS:NETWORK_POLICY:DENY']],
    [conn('10.99.1.1', '10.99.1.2', 'ICMP', 0), false, ['EGRESS:DEFAULT:ALLOW', 'INGRESS:NETWORK_POLICY:DENY']],
    [conn('10.99.1.1', '10.99.1.2', 'SCTP', 80), true, ['EGRESS:DEFAULT:ALLOW', 'INGRESS:NETWORK_POLICY:ALLOW']],
    [conn('10.99.1.3', '192.0.2.1', 'TCP', 443), false, ['EGRESS:NETWORK_POLICY:DENY']],
    [conn('10.99.1.3', '10.99.1.1', 'ICMP', 0), true, ['EGRESS:NETWORK_POLICY:ALLOW', 'INGRESS:DEFAULT:ALLOW']],
    [conn('192.0.2.1', '10.99.1.1'), true, ['INGRESS:DEFAULT:ALLOW']],
    [conn('192.0.2.1', '192.0.2.2'), true, []],
    [conn('fd00:99:1::1', 'fd00:99:1::2'), true, ['EGRESS:DEFAULT:ALLOW', 'INGRESS:NETWORK_POLICY:ALLOW']],
    [conn('10.99.1.2', '10.99.1.2'), true, []], // itself, directly
    [conn('10.99.1.2', '10.99.1.2', 'TCP', 80, true), false, ['EGRESS:DEFAULT:ALLOW', 'INGRESS:NETWORK_POLICY:DENY']],
  ]) {
    const d = policy.decide(base, c);
    const what = `${ip.format(c.src)} -> ${ip.format(c.dst)} ${c.protocol} ${c.port}`;
    assert.strictEqual(d.allow, allow, what);
    const got = d.explanations.map((e) => [e.direction, e.tier, e.verdict].map((s) => s.replace(/^[A-Z]+_(?=[A-Z])/, '')).join(':'));
    assert.deepStrictEqual(got, dirs, what);
  }
});

test('decide names the pod, the policy and the rule', () => {
  const [, ingress] = policy.decide(base, conn('10.99.1.1', '10.99.1.2')).explanations;
  assert.deepStrictEqual(ingress.pod, { namespace: 'y', name: 'b' });
  assert.deepStrictEqual(ingress.policy, { kind: 'Allowlist', namespace: '', name: 'y/b' });
  assert.deepStrictEqual(ingress.rule, { index: 0, name: '' });
  const [, denied] = policy.decide(base, conn('10.99.1.3', '10.99.1.2')).explanations;
  assert.strictEqual(denied.rule, undefined);
});

test('port ranges and whole protocols', () => {
  const s = policy.compile(JSON.stringify({ endpoints: [{ name: 'p', ips: ['10.0.0.1'], ingress: [{ ports: [{ protocol: 'UDP', port: 1000, endPort: 1010 }, { protocol: 'SCTP' }] }] }] }));
  const d = (proto, port) => policy.decide(s, conn('10.0.0.9', '10.0.0.1', proto, port)).allow;
  assert.ok(d('UDP', 1000) && d('UDP', 1010) && !d('UDP', 1011) && !d('TCP', 1005));
  assert.ok(d('SCTP', 1) && d('SCTP', 65535) && !d('ICMP', 0));
});

test('selected: rules in some direction, on the node, sorted', () => {
  const fmt = (s, node) => policy.selected(s, node).map(ip.format);
  assert.deepStrictEqual(fmt(base, 'node-1'), ['10.99.1.2', '10.99.1.3', 'fd00:99:1::2', 'fd00:99:1::3']);
  assert.deepStrictEqual(fmt(changed, 'node-1'), ['10.99.1.1', '10.99.1.2', '10.99.1.3', 'fd00:99:1::1', 'fd00:99:1::2', 'fd00:99:1::3']);
  assert.deepStrictEqual(fmt(base, 'node-2'), []);
  assert.deepStrictEqual(fmt(base, ''), fmt(base, 'node-1'));
});

test('changed lists exactly the addresses whose entries differ', () => {
  assert.deepStrictEqual(policy.changed(base, changed).map(ip.format), ['10.99.1.1', '10.99.1.2', 'fd00:99:1::1', 'fd00:99:1::2']);
  assert.deepStrictEqual(policy.changed(base, base), []);
  const gone = policy.compile('{"endpoints": []}');
  assert.strictEqual(policy.changed(base, gone).length, 6);
});

// For random pairs of policies, a connection between two addresses that
// changed does not list keeps its verdict: the promise Watch makes.
test('changed covers every verdict that changes', () => {
  const addrs = ['10.0.0.1', '10.0.0.2', '10.0.0.3', '10.0.1.1', '192.0.2.9'];
  let seed = 7; // mulberry32: small, seeded, good enough for a test
  const rand = (n) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) % n;
  };
  const randomPolicy = () => {
    const endpoints = [];
    addrs.slice(0, 4).forEach((a, i) => {
      if (rand(4) === 0) return;
      const e = { name: `ns/p${i}`, ips: [a] };
      const rules = () => Array.from({ length: rand(3) }, () => ({
        ...(rand(2) ? { from: [['10.0.0.0/24', '10.0.0.2/32', '10.0.1.0/24'][rand(3)]] } : {}),
        ...(rand(2) ? { ports: [{ protocol: 'TCP', port: 80 }] } : {}),
      }));
      if (rand(2)) e.ingress = rules();
      if (rand(2)) e.egress = rules().map((r) => (r.from ? { to: r.from, ports: r.ports } : r));
      endpoints.push(e);
    });
    return policy.compile(JSON.stringify({ endpoints }));
  };
  for (let round = 0; round < 300; round++) {
    const a = randomPolicy();
    const b = randomPolicy();
    const listed = new Set(policy.changed(a, b).map(ip.key));
    for (const s of addrs) {
      for (const d of addrs) {
        for (const [proto, port] of [['TCP', 80], ['UDP', 53]]) {
          const c = conn(s, d, proto, port);
          if (listed.has(ip.key(c.src)) || listed.has(ip.key(c.dst))) continue;
          assert.strictEqual(policy.decide(b, c).allow, policy.decide(a, c).allow, `round ${round}: ${s} -> ${d} ${proto}`);
        }
      }
    }
  }
});

test('compile names the field at fault', () => {
  for (const [text, want] of [
    ['{', /not JSON/],
    ['{"endpoint": []}', /unknown field "endpoint"/],
    ['{"endpoints": [{"ips": ["10.0.0.1"]}]}', /endpoints\[0\]\.name/],
    ['{"endpoints": [{"name": "a", "ips": []}]}', /endpoints\[0\]\.ips: must list/],
    ['{"endpoints": [{"name": "a", "ips": ["10.0.0"]}]}', /endpoints\[0\]\.ips\[0\]/],
    ['{"endpoints": [{"name": "a", "ips": ["10.0.0.1"]}, {"name": "a", "ips": ["10.0.0.2"]}]}', /used twice/],
    ['{"endpoints": [{"name": "a", "ips": ["10.0.0.1"]}, {"name": "b", "ips": ["10.0.0.1"]}]}', /also a's/],
    ['{"endpoints": [{"name": "a", "ips": ["10.0.0.1"], "ingress": [{"to": []}]}]}', /ingress\[0\]: unknown field "to"/],
    ['{"endpoints": [{"name": "a", "ips": ["10.0.0.1"], "ingress": [{"from": ["10.0.0.1/8"]}]}]}', /ingress\[0\]\.from\[0\]: .*host bits/],
    ['{"endpoints": [{"name": "a", "ips": ["10.0.0.1"], "egress": [{"ports": [{"protocol": "ICMP"}]}]}]}', /egress\[0\]\.ports\[0\]\.protocol/],
    ['{"endpoints": [{"name": "a", "ips": ["10.0.0.1"], "egress": [{"ports": [{"port": 70000}]}]}]}', /ports\[0\]\.port/],
    ['{"endpoints": [{"name": "a", "ips": ["10.0.0.1"], "egress": [{"ports": [{"port": 9, "endPort": 8}]}]}]}', /endPort: 8 is below/],
    ['{"endpoints": [{"name": "a", "ips": ["10.0.0.1"], "egress": [{"ports": [{"endPort": 8}]}]}]}', /endPort: needs port/],
  ]) {
    assert.throws(() => policy.compile(text), (e) => e instanceof policy.PolicyError && want.test(e.message), text);
  }
});
