'use strict';
// tollgate.v1.DeciderService over the allowlist: Decide, DecideStream and
// Watch, with the generations, instance and changed lists of
// docs/decider-contract.md.

const crypto = require('node:crypto');
const grpc = require('@grpc/grpc-js');
const ip = require('./ip');
const policy = require('./policy');

const PROTOCOLS = { PROTOCOL_TCP: 'TCP', PROTOCOL_UDP: 'UDP', PROTOCOL_SCTP: 'SCTP', PROTOCOL_ICMP: 'ICMP' };

/** InvalidInput is a malformed request; its message names the field. */
class InvalidInput extends Error {}

/**
 * connection validates one request's fields, already decoded into
 * addresses (null when malformed). names says what the request calls its
 * address fields (src_ip or src_addr, ...) and why a bad one is bad.
 */
function connection(f, names) {
  if (!f.src) throw new InvalidInput(`${names.src}: ${names.bad(f.rawSrc)}`);
  if (!f.dst) throw new InvalidInput(`${names.dst}: ${names.bad(f.rawDst)}`);
  if (f.src.family !== f.dst.family) throw new InvalidInput(`${names.dst}: not of the same address family as ${names.src}`);
  if (f.srcPort > 65535) throw new InvalidInput(`src_port: ${f.srcPort} is greater than 65535`);
  if (f.dstPort > 65535) throw new InvalidInput(`dst_port: ${f.dstPort} is greater than 65535`);
  const protocol = PROTOCOLS[f.protocol];
  if (f.protocol === 'PROTOCOL_UNSPECIFIED') throw new InvalidInput('protocol: must be set (PROTOCOL_TCP, PROTOCOL_UDP, PROTOCOL_SCTP or PROTOCOL_ICMP)');
  if (!protocol) throw new InvalidInput(`protocol: unknown value ${f.protocol}`);
  return { src: f.src, dst: f.dst, protocol, port: f.dstPort, viaService: Boolean(f.viaService) };
}

const textNames = { src: 'src_ip', dst: 'dst_ip', bad: (v) => `${JSON.stringify(v)} is not an IP address` };
const byteNames = { src: 'src_addr', dst: 'dst_addr', bad: (v) => `${(v || []).length} bytes, want 4 or 16` };

function fromRequest(r) {
  return connection({
    src: ip.parse(r.src_ip), dst: ip.parse(r.dst_ip), rawSrc: r.src_ip, rawDst: r.dst_ip,
    protocol: r.protocol, srcPort: r.src_port, dstPort: r.dst_port, viaService: r.via_service,
  }, textNames);
}

function fromQuery(q) {
  return connection({
    src: ip.fromBytes(q.src_addr), dst: ip.fromBytes(q.dst_addr), rawSrc: q.src_addr, rawDst: q.dst_addr,
    protocol: q.protocol, srcPort: 0, dstPort: q.dst_port, viaService: q.via_service,
  }, byteNames);
}

class Decider {
  /** node is the decider's own node, for Watch requests that name none. */
  constructor({ node }) {
    this.node = node;
    // A new instance per process: the queuer drops its caches when it
    // changes, because a restarted decider numbers generations from 1 again.
    this.instance = crypto.randomUUID();
    this.current = null; // {generation, state}
    this.watchers = new Set();
  }

  /** publish makes a compiled policy the current state, at a new generation. */
  publish(state) {
    this.current = { generation: (this.current?.generation ?? 0) + 1, state };
    for (const w of this.watchers) w();
    return this.current.generation;
  }

  /** close ends every Watch stream: the decider is going away. */
  close() {
    this.closing = true;
    for (const w of this.watchers) w();
  }

  implementation() {
    return {
      Decide: (call, callback) => {
        let c;
        try {
          c = fromRequest(call.request);
        } catch (e) {
          if (!(e instanceof InvalidInput)) throw e;
          callback({ code: grpc.status.INVALID_ARGUMENT, details: e.message });
          return;
        }
        const cur = this.current;
        if (!cur) {
          callback({ code: grpc.status.UNAVAILABLE, details: 'no policy loaded yet' });
          return;
        }
        const d = policy.decide(cur.state, c);
        callback(null, { verdict: d.allow ? 'VERDICT_ALLOW' : 'VERDICT_DENY', generation: String(cur.generation), explanations: d.explanations });
      },

      DecideStream: (call) => {
        call.on('data', (req) => {
          const cur = this.current;
          const results = (req.queries || []).map((q) => {
            try {
              const c = fromQuery(q);
              if (!cur) return { id: q.id, error: 'no policy loaded yet' };
              const allow = policy.decide(cur.state, c).allow;
              return { id: q.id, verdict: allow ? 'VERDICT_ALLOW' : 'VERDICT_DENY', generation: String(cur.generation) };
            } catch (e) {
              if (!(e instanceof InvalidInput)) throw e;
              return { id: q.id, error: e.message };
            }
          });
          call.write({ results });
        });
        call.on('end', () => call.end());
        call.on('error', () => {}); // the client went away
      },

      Watch: (call) => {
        const node = call.request.node_name || this.node;
        let sent = null; // the {generation, state} last sent on this stream
        let blocked = false; // waiting for the stream to drain
        const update = () => {
          if (this.closing) {
            this.watchers.delete(update);
            call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'decider shutting down' });
            return;
          }
          const cur = this.current;
          if (blocked || !cur || cur === sent) return;
          // What changed is computed against what this stream was last
          // told, so a slow reader that skipped generations still gets a
          // complete list.
          const addrs = policy.selected(cur.state, node);
          const msg = {
            generation: String(cur.generation),
            instance: this.instance,
            selected_ipv4: addrs.filter((a) => a.family === 4).map((a) => a.bytes),
            selected_ipv6: addrs.filter((a) => a.family === 6).map((a) => a.bytes),
            changed_all: sent === null,
            changed: sent === null ? [] : policy.changed(sent.state, cur.state).map((a) => a.bytes),
          };
          sent = cur;
          if (!call.write(msg)) {
            blocked = true;
            call.once('drain', () => {
              blocked = false;
              update();
            });
          }
        };
        this.watchers.add(update);
        const forget = () => this.watchers.delete(update);
        call.on('cancelled', forget);
        call.on('close', forget);
        call.on('error', forget);
        update();
      },
    };
  }
}

module.exports = { Decider, fromRequest, fromQuery, InvalidInput };
