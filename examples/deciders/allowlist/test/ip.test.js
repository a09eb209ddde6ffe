'use strict';
const test = require('node:test');
const assert = require('node:assert');
const ip = require('../lib/ip');

test('parse and format round trip', () => {
  for (const [text, family, hex, back] of [
    ['10.99.1.2', 4, '0a630102', '10.99.1.2'],
    ['::', 6, '0'.repeat(32), '::'],
    ['fd00:99:1::2', 6, 'fd000099000100000000000000000002', 'fd00:99:1::2'],
    ['::ffff:10.0.0.1', 4, '0a000001', '10.0.0.1'], // IPv4-mapped is IPv4
    ['::1.2.3.4', 6, '00000000000000000000000001020304', '::102:304'],
    ['1:2:3:4:5:6:7:8', 6, '00010002000300040005000600070008', '1:2:3:4:5:6:7:8'],
    ['2001:db8:0:0:1:0:0:1', 6, '20010db8000000000001000000000001', '2001:db8::1:0:0:1'],
  ]) {
    const a = ip.parse(text);
    assert.ok(a, text);
    assert.strictEqual(a.family, family, text);
    assert.strictEqual(a.bytes.toString('hex'), hex, text);
    assert.strictEqual(ip.format(a), back, text);
  }
});

test('parse rejects what is not an address', () => {
  for (const text of ['', '10.99.1', '10.99.1.256', 'fe80::1%eth0', '1::2::3', 'x', undefined, 7]) {
    assert.strictEqual(ip.parse(text), null, String(text));
  }
});

test('fromBytes takes 4 or 16 bytes only', () => {
  assert.strictEqual(ip.format(ip.fromBytes(Buffer.from([10, 0, 0, 1]))), '10.0.0.1');
  assert.strictEqual(ip.fromBytes(Buffer.from([10, 0, 1])), null);
  assert.strictEqual(ip.fromBytes(Buffer.alloc(0)), null);
  assert.strictEqual(ip.fromBytes(Buffer.from('00000000000000000000ffff0a000001', 'hex')).family, 4);
});

test('parseCIDR and contains', () => {
  const p = ip.parseCIDR('10.99.1.0/24');
  assert.ok(ip.contains(p, ip.parse('10.99.1.200')));
  assert.ok(!ip.contains(p, ip.parse('10.99.2.1')));
  assert.ok(!ip.contains(p, ip.parse('fd00::1')));
  assert.ok(ip.contains(ip.parseCIDR('10.99.1.0/25'), ip.parse('10.99.1.127')));
  assert.ok(!ip.contains(ip.parseCIDR('10.99.1.0/25'), ip.parse('10.99.1.128')));
  assert.ok(ip.contains(ip.parseCIDR('0.0.0.0/0'), ip.parse('8.8.8.8')));
  assert.ok(ip.contains(ip.parseCIDR('fd00:99:1::/64'), ip.parse('fd00:99:1::3')));
  assert.strictEqual(ip.parseCIDR('10.0.0.7').bits, 32);
  assert.strictEqual(ip.parseCIDR('::ffff:10.0.0.0/104').bits, 8);
  for (const bad of ['10.0.0.1/8', '10.0.0.0/33', '10.0.0.0/', 'x/8', '10.0.0.0/8/8', '::ffff:10.0.0.0/64']) {
    assert.throws(() => ip.parseCIDR(bad), undefined, bad);
  }
});

test('compare sorts IPv4 before IPv6, then by bytes', () => {
  const list = ['fd00::1', '10.0.0.2', '::1', '10.0.0.1'].map(ip.parse).sort(ip.compare).map(ip.format);
  assert.deepStrictEqual(list, ['10.0.0.1', '10.0.0.2', '::1', 'fd00::1']);
});
