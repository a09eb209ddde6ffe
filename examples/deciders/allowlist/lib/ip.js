'use strict';
// IP addresses as the contract carries them: 4 or 16 bytes. An address is
// {family: 4 | 6, bytes: Buffer}; IPv4-mapped IPv6 addresses count as IPv4.

const net = require('node:net');

/** parse reads an address in text form; null if it is not one. */
function parse(text) {
  if (typeof text !== 'string' || text.includes('%')) return null; // no zones
  if (net.isIPv4(text)) return { family: 4, bytes: Buffer.from(text.split('.').map(Number)) };
  if (!net.isIPv6(text)) return null;
  if (text.includes('.')) {
    // An embedded IPv4 address fills the last two groups: rewrite it in hex.
    const i = text.lastIndexOf(':');
    const v4 = text.slice(i + 1).split('.').map(Number);
    text = `${text.slice(0, i + 1)}${((v4[0] << 8) | v4[1]).toString(16)}:${((v4[2] << 8) | v4[3]).toString(16)}`;
  }
  const [left, right] = text.includes('::') ? text.split('::') : [text, null];
  const groups = (s) => (s ? s.split(':').map((g) => parseInt(g, 16)) : []);
  const l = groups(left);
  const r = right === null ? [] : groups(right);
  const all = right === null ? l : [...l, ...Array(8 - l.length - r.length).fill(0), ...r];
  const bytes = Buffer.alloc(16);
  all.forEach((g, i) => bytes.writeUInt16BE(g, i * 2));
  return unmap(bytes);
}

/** fromBytes reads an address from 4 or 16 bytes; null for other lengths. */
function fromBytes(b) {
  if (!Buffer.isBuffer(b)) b = Buffer.from(b || []);
  if (b.length === 4) return { family: 4, bytes: Buffer.from(b) };
  if (b.length === 16) return unmap(Buffer.from(b));
  return null;
}

const mappedPrefix = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

function unmap(bytes16) {
  if (bytes16.subarray(0, 12).equals(mappedPrefix)) return { family: 4, bytes: bytes16.subarray(12) };
  return { family: 6, bytes: bytes16 };
}

/** format writes an address as text (IPv6 with its longest zero run as ::). */
function format(a) {
  if (a.family === 4) return Array.from(a.bytes).join('.');
  const g = [];
  for (let i = 0; i < 16; i += 2) g.push(a.bytes.readUInt16BE(i));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(':');
  return hex.slice(0, best).join(':') + '::' + hex.slice(best + bestLen).join(':');
}

/** key is a string that identifies an address, for maps and sets. */
function key(a) {
  return a.family + ':' + a.bytes.toString('hex');
}

/**
 * parseCIDR reads "address/bits" (or a bare address, a single host);
 * it throws when the text is not a prefix or has host bits set.
 */
function parseCIDR(text) {
  const bad = (why) => new Error(`${JSON.stringify(text)} ${why}`);
  const m = /^([^/]+)(?:\/(\d{1,3}))?$/.exec(String(text));
  const a = m && parse(m[1]);
  if (!a) throw bad('is not an address or CIDR prefix');
  let bits = m[2] === undefined ? a.bytes.length * 8 : Number(m[2]);
  if (a.family === 4 && m[1].includes(':') && m[2] !== undefined) {
    // An IPv4-mapped IPv6 prefix: its last 32 bits are the IPv4 prefix.
    if (bits < 96) throw bad('mixes IPv6 and IPv4-mapped addresses');
    bits -= 96;
  }
  if (bits > a.bytes.length * 8) throw bad('has more prefix bits than the address');
  const p = { family: a.family, bytes: a.bytes, bits };
  if (!hostBitsZero(p)) throw bad('has host bits set');
  return p;
}

function hostBitsZero(p) {
  for (let bit = p.bits; bit < p.bytes.length * 8; bit++) {
    if (p.bytes[bit >> 3] & (0x80 >> (bit & 7))) return false;
  }
  return true;
}

/** contains reports whether prefix p holds address a. */
function contains(p, a) {
  if (p.family !== a.family) return false;
  const whole = p.bits >> 3;
  if (!p.bytes.subarray(0, whole).equals(a.bytes.subarray(0, whole))) return false;
  const rest = p.bits & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (p.bytes[whole] & mask) === (a.bytes[whole] & mask);
}

/** compare orders addresses the way the contract sorts them: IPv4 first, then by bytes. */
function compare(a, b) {
  if (a.family !== b.family) return a.family - b.family;
  return Buffer.compare(a.bytes, b.bytes);
}

module.exports = { parse, fromBytes, format, key, parseCIDR, contains, compare };
