'use strict';
const test = require('node:test');
const assert = require('node:assert');
const { fromRequest, fromQuery, InvalidInput } = require('../lib/decider');

const good = { src_ip: '10.0.0.1', dst_ip: '10.0.0.2', protocol: 'PROTOCOL_TCP', src_port: 40000, dst_port: 80, via_service: false };

test('requests are validated field by field', () => {
  assert.strictEqual(fromRequest(good).protocol, 'TCP');
  for (const [change, field] of [
    [{ src_ip: '10.0.0' }, 'src_ip'],
    [{ dst_ip: '' }, 'dst_ip'],
    [{ dst_ip: 'fd00::1' }, 'dst_ip'],
    [{ protocol: 'PROTOCOL_UNSPECIFIED' }, 'protocol'],
    [{ protocol: 99 }, 'protocol'],
    [{ dst_port: 65536 }, 'dst_port'],
    [{ src_port: 70000 }, 'src_port'],
  ]) {
    assert.throws(() => fromRequest({ ...good, ...change }), (e) => e instanceof InvalidInput && e.message.startsWith(field), field);
  }
});

test('stream queries carry 4 or 16 bytes', () => {
  const q = { src_addr: Buffer.from([10, 0, 0, 1]), dst_addr: Buffer.from([10, 0, 0, 2]), protocol: 'PROTOCOL_UDP', dst_port: 53, via_service: true };
  assert.deepStrictEqual(fromQuery(q).viaService, true);
  assert.throws(() => fromQuery({ ...q, src_addr: Buffer.from([10, 0, 1]) }), /src_addr: 3 bytes/);
  assert.throws(() => fromQuery({ ...q, dst_addr: Buffer.alloc(16, 0xfd) }), /dst_addr: not of the same address family/);
});
