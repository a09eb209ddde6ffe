'use strict';
// The plugin as a process: health before and after the first policy, a bad
// file keeping the last good policy, and a clean stop on SIGTERM.
const test = require('node:test');
const assert = require('node:assert');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const opts = { keepCase: true, longs: String, enums: String, defaults: true };
const root = path.join(__dirname, '..');
const health = grpc.loadPackageDefinition(protoLoader.loadSync(path.join(root, 'health.proto'), opts)).grpc.health.v1;
const tollgate = grpc.loadPackageDefinition(protoLoader.loadSync(path.join(root, '../../../proto/tollgate/v1/decider.proto'), opts)).tollgate.v1;

const call = (client, method, req) => new Promise((resolve) => {
  client[method](req, { deadline: Date.now() + 2000 }, (err, resp) => resolve({ err, resp }));
});

async function eventually(what, fn) {
  for (const deadline = Date.now() + 5000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 50))) {
    if (await fn()) return;
  }
  assert.fail(`timed out waiting for ${what}`);
}

test('health follows the policy file; a bad file keeps the last good policy; SIGTERM stops cleanly', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'allowlist-'));
  const policy = path.join(dir, 'policy.json');
  const socket = path.join(dir, 'd.sock');
  const child = spawn(process.execPath, [path.join(root, 'main.js'), '--policy', policy, '--socket', socket, '--node-name', 'n1', '--poll-interval-ms', '100'], { stdio: 'ignore' });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  try {
    await eventually('the socket', () => fs.existsSync(socket));
    assert.strictEqual(fs.statSync(socket).mode & 0o777, 0o660);
    const h = new health.Health(`unix:${socket}`, grpc.credentials.createInsecure());
    const d = new tollgate.DeciderService(`unix:${socket}`, grpc.credentials.createInsecure());
    const status = async (service) => (await call(h, 'Check', { service })).resp?.status;
    const req = { src_ip: '10.0.0.9', dst_ip: '10.0.0.1', protocol: 'PROTOCOL_TCP', dst_port: 80 };

    // No policy yet: not serving, and Decide is unavailable.
    assert.strictEqual(await status('tollgate.v1.DeciderService'), 'NOT_SERVING');
    assert.strictEqual(await status(''), 'NOT_SERVING');
    assert.strictEqual((await call(d, 'Decide', req)).err.code, grpc.status.UNAVAILABLE);
    assert.strictEqual((await call(h, 'Check', { service: 'other' })).err.code, grpc.status.NOT_FOUND);

    fs.writeFileSync(policy, JSON.stringify({ endpoints: [{ name: 'a', ips: ['10.0.0.1'], ingress: [] }] }));
    await eventually('SERVING', async () => (await status('tollgate.v1.DeciderService')) === 'SERVING');
    const first = (await call(d, 'Decide', req)).resp;
    assert.deepStrictEqual([first.verdict, first.generation], ['VERDICT_DENY', '1']);

    fs.writeFileSync(policy, '{"endpoints": [');
    await new Promise((r) => setTimeout(r, 400));
    assert.strictEqual(await status('tollgate.v1.DeciderService'), 'SERVING');
    assert.strictEqual((await call(d, 'Decide', req)).resp.generation, '1');

    fs.writeFileSync(policy, JSON.stringify({ endpoints: [{ name: 'a', ips: ['10.0.0.1'] }] }));
    await eventually('generation 2', async () => (await call(d, 'Decide', req)).resp.generation === '2');
    assert.strictEqual((await call(d, 'Decide', req)).resp.verdict, 'VERDICT_ALLOW');
    h.close();
    d.close();

    child.kill('SIGTERM');
    assert.deepStrictEqual(await exited, { code: 0, signal: null });
    assert.ok(!fs.existsSync(socket), 'the socket outlived the process');
  } finally {
    child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
