'use strict';
// The allowlist: what the policy file says, and the verdicts it gives.
// Everything here is pure: no I/O, no clock, no globals.
//
// A policy file is JSON:
//
//   {"endpoints": [
//     {"name": "y/b", "node": "node-1", "ips": ["10.99.1.2", "fd00:99:1::2"],
//      "ingress": [{"from": ["10.99.1.1/32"], "ports": [{"protocol": "TCP", "port": 80}]}],
//      "egress": [{"to": ["10.99.1.0/24"]}]}
//   ]}
//
// An endpoint (a pod) with an `ingress` list accepts only the connections
// some rule of the list allows; without the key, its ingress is not
// restricted. The same goes for `egress`. A rule matches when the peer is
// in one of its prefixes (no `from`/`to`: any peer) and the connection in
// one of its ports (no `ports`: every protocol and port, ICMP included;
// a port entry without `port` covers every port of its protocol; `endPort`
// makes a range). ICMP has no ports, so only rules without `ports` match it.

const ip = require('./ip');

const PROTOCOLS = new Set(['TCP', 'UDP', 'SCTP']);

/** PolicyError is a mistake in the policy file, with where it is. */
class PolicyError extends Error {}

function fail(where, why) {
  throw new PolicyError(`${where}: ${why}`);
}

function onlyKeys(obj, where, allowed) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) fail(where, 'must be an object');
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) fail(where, `unknown field ${JSON.stringify(k)} (known: ${allowed.join(', ')})`);
  }
}

function list(value, where) {
  if (!Array.isArray(value)) fail(where, 'must be a list');
  return value;
}

function compilePorts(ports, where) {
  if (ports === undefined) return null;
  return list(ports, where).map((p, i) => {
    const at = `${where}[${i}]`;
    onlyKeys(p, at, ['protocol', 'port', 'endPort']);
    const protocol = String(p.protocol ?? 'TCP').toUpperCase();
    if (!PROTOCOLS.has(protocol)) fail(`${at}.protocol`, `${JSON.stringify(p.protocol)}: want TCP, UDP or SCTP`);
    const num = (v, name) => {
      if (!Number.isInteger(v) || v < 1 || v > 65535) fail(`${at}.${name}`, `${JSON.stringify(v)} is not a port (1-65535)`);
      return v;
    };
    if (p.port === undefined) {
      if (p.endPort !== undefined) fail(`${at}.endPort`, 'needs port');
      return { protocol, from: 0, to: 65535 };
    }
    const from = num(p.port, 'port');
    const to = p.endPort === undefined ? from : num(p.endPort, 'endPort');
    if (to < from) fail(`${at}.endPort`, `${to} is below port ${from}`);
    return { protocol, from, to };
  });
}

function compileRules(rules, where, peerKey) {
  if (rules === undefined) return null; // not restricted
  return list(rules, where).map((r, i) => {
    const at = `${where}[${i}]`;
    onlyKeys(r, at, [peerKey, 'ports']);
    let peers = null;
    if (r[peerKey] !== undefined) {
      peers = list(r[peerKey], `${at}.${peerKey}`).map((c, j) => {
        try {
          return ip.parseCIDR(c);
        } catch (e) {
          return fail(`${at}.${peerKey}[${j}]`, e.message);
        }
      });
    }
    return { peers, ports: compilePorts(r.ports, `${at}.ports`) };
  });
}

/**
 * compile parses a policy file's text into a state: {endpoints, byAddr},
 * byAddr mapping ip.key(address) to its endpoint. It throws a PolicyError
 * naming the field at fault.
 */
function compile(text) {
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new PolicyError(`not JSON: ${e.message}`);
  }
  onlyKeys(doc, 'policy', ['endpoints']);
  const endpoints = [];
  const byAddr = new Map();
  const names = new Set();
  list(doc.endpoints ?? [], 'endpoints').forEach((e, i) => {
    const at = `endpoints[${i}]`;
    onlyKeys(e, at, ['name', 'node', 'ips', 'ingress', 'egress']);
    if (typeof e.name !== 'string' || e.name === '') fail(`${at}.name`, 'must be a non-empty string');
    if (names.has(e.name)) fail(`${at}.name`, `${JSON.stringify(e.name)} is used twice`);
    names.add(e.name);
    if (e.node !== undefined && typeof e.node !== 'string') fail(`${at}.node`, 'must be a string');
    const addrs = list(e.ips, `${at}.ips`).map((t, j) => ip.parse(t) || fail(`${at}.ips[${j}]`, `${JSON.stringify(t)} is not an IP address`));
    if (addrs.length === 0) fail(`${at}.ips`, 'must list at least one address');
    const [namespace, podName] = e.name.includes('/') ? e.name.split('/', 2) : ['', e.name];
    const ep = {
      name: e.name,
      namespace,
      podName,
      node: e.node ?? '',
      addrs,
      ingress: compileRules(e.ingress, `${at}.ingress`, 'from'),
      egress: compileRules(e.egress, `${at}.egress`, 'to'),
      // Two states judge this endpoint's connections alike exactly when
      // its entry is the same (see changed).
      signature: JSON.stringify([e.name, e.ips, e.ingress ?? null, e.egress ?? null]),
    };
    for (const a of addrs) {
      const k = ip.key(a);
      if (byAddr.has(k)) fail(`${at}.ips`, `${ip.format(a)} is also ${byAddr.get(k).name}'s`);
      byAddr.set(k, ep);
    }
    endpoints.push(ep);
  });
  return { endpoints, byAddr };
}

function portMatches(ports, protocol, port) {
  if (ports === null) return true;
  if (protocol === 'ICMP') return false;
  return ports.some((p) => p.protocol === protocol && port >= p.from && port <= p.to);
}

// direction evaluates one side of a connection: ep's rules for direction
// ('ingress' or 'egress') against the peer address.
function direction(ep, dir, peer, protocol, port) {
  const exp = {
    direction: dir === 'ingress' ? 'DIRECTION_INGRESS' : 'DIRECTION_EGRESS',
    pod: { namespace: ep.namespace, name: ep.podName },
  };
  const rules = ep[dir];
  if (rules === null) {
    return { ...exp, tier: 'TIER_DEFAULT', action: 'ACTION_ALLOW', verdict: 'VERDICT_ALLOW', reason: `${ep.name} has no ${dir} rules: allowed` };
  }
  const policy = { kind: 'Allowlist', namespace: '', name: ep.name };
  const peerKey = dir === 'ingress' ? 'from' : 'to';
  const i = rules.findIndex((r) => (r.peers === null || r.peers.some((p) => ip.contains(p, peer))) && portMatches(r.ports, protocol, port));
  if (i < 0) {
    return {
      ...exp, tier: 'TIER_NETWORK_POLICY', policy, action: 'ACTION_DENY', verdict: 'VERDICT_DENY',
      reason: `no ${dir} rule of ${ep.name} allows ${peerKey} ${ip.format(peer)}: denied`,
    };
  }
  return {
    ...exp, tier: 'TIER_NETWORK_POLICY', policy, rule: { index: i, name: '' }, action: 'ACTION_ALLOW', verdict: 'VERDICT_ALLOW',
    reason: `${dir} rule ${i} of ${ep.name} allows ${peerKey} ${ip.format(peer)}`,
  };
}

/**
 * decide judges a connection {src, dst (addresses), protocol ('TCP', 'UDP',
 * 'SCTP' or 'ICMP'), port, viaService}: egress of the source endpoint and
 * ingress of the destination endpoint, each when the address is an
 * endpoint's. It returns {allow, explanations}.
 */
function decide(state, c) {
  const from = state.byAddr.get(ip.key(c.src));
  const to = state.byAddr.get(ip.key(c.dst));
  if (from && from === to && !c.viaService) {
    return { allow: true, explanations: [] }; // a pod reaching itself directly
  }
  const explanations = [];
  if (from) explanations.push(direction(from, 'egress', c.dst, c.protocol, c.port));
  if (to) explanations.push(direction(to, 'ingress', c.src, c.protocol, c.port));
  return { allow: explanations.every((e) => e.verdict === 'VERDICT_ALLOW'), explanations };
}

/**
 * selected lists the addresses of the node's endpoints that have rules in
 * some direction (every endpoint's when node is ''), sorted.
 */
function selected(state, node) {
  const out = [];
  for (const ep of state.endpoints) {
    if ((node === '' || ep.node === node) && (ep.ingress !== null || ep.egress !== null)) out.push(...ep.addrs);
  }
  return out.sort(ip.compare);
}

/**
 * changed lists, sorted, the addresses whose connections two states may
 * judge differently: every address whose endpoint entry differs (or that
 * is an endpoint's in one state only). A connection's verdict depends only
 * on the entries of its two addresses, so a connection between two
 * unlisted addresses keeps its verdict.
 */
function changed(before, after) {
  const out = [];
  const sig = (state, k) => state.byAddr.get(k)?.signature;
  const keys = new Set([...before.byAddr.keys(), ...after.byAddr.keys()]);
  for (const k of keys) {
    if (sig(before, k) !== sig(after, k)) out.push((after.byAddr.get(k) || before.byAddr.get(k)).addrs.find((a) => ip.key(a) === k));
  }
  return out.sort(ip.compare);
}

module.exports = { compile, decide, selected, changed, PolicyError };
