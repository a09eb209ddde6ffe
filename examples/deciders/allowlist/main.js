#!/usr/bin/env node
'use strict';
// A Tollgate decider plugin: serves tollgate.v1.DeciderService on a Unix
// socket from a JSON allowlist (lib/policy.js describes the file), and
// reloads the file whenever it changes.
//
//   node main.js --policy allowlist.json [--socket /run/tollgate/decider.sock] [--node-name NODE]
//   node main.js healthcheck [--socket PATH]   # exit 0 when SERVING, for probes
//
// The .proto files are loaded at run time with @grpc/proto-loader: there
// is no generated code.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const net = require('node:net');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const policy = require('./lib/policy');
const { Decider } = require('./lib/decider');
const { Health } = require('./lib/health');

const SERVICE = 'tollgate.v1.DeciderService';

function log(msg) {
  process.stderr.write(`${new Date().toISOString()} allowlist-decider: ${msg}\n`);
}

// The contract's .proto: next to this file in an image, or in the
// Tollgate repository this example lives in.
function defaultProto() {
  const candidates = [
    path.join(__dirname, 'proto/tollgate/v1/decider.proto'),
    path.join(__dirname, '../../../proto/tollgate/v1/decider.proto'),
  ];
  return candidates.find((p) => fs.existsSync(p)) ?? candidates[0];
}

function load(file) {
  // keepCase: the proto's field names (src_ip); longs as strings, so
  // uint64 query ids travel back unchanged; enums by name; proto3 defaults
  // filled in, so an absent field reads as its zero value.
  const def = protoLoader.loadSync(file, { keepCase: true, longs: String, enums: String, defaults: true });
  return grpc.loadPackageDefinition(def);
}

// listen binds the socket with mode 0660 (the queuer reaches it through
// the group), replacing a stale socket but never a live one.
async function listen(server, socket) {
  fs.mkdirSync(path.dirname(socket), { recursive: true });
  if (fs.existsSync(socket)) {
    const live = await new Promise((resolve) => {
      const c = net.connect(socket, () => c.end(() => resolve(true)));
      c.on('error', () => resolve(false));
    });
    if (live) throw new Error(`another process is serving on ${socket}`);
    fs.unlinkSync(socket);
  }
  const old = process.umask(0o117);
  try {
    await new Promise((resolve, reject) => {
      server.bindAsync(`unix:${socket}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()));
    });
  } finally {
    process.umask(old);
  }
  fs.chmodSync(socket, 0o660);
}

// watchFile calls reload now, on every change of the file's directory,
// and every interval (a safety net for file systems without events, such
// as a ConfigMap's symlink swap on some kernels).
function watchFile(file, interval, reload) {
  let timer = null;
  const soon = () => {
    clearTimeout(timer);
    timer = setTimeout(reload, 50);
  };
  try {
    fs.watch(path.dirname(file), soon).on('error', (e) => log(`watching ${path.dirname(file)}: ${e.message}`));
  } catch (e) {
    log(`watching ${path.dirname(file)}: ${e.message}; polling only`);
  }
  setInterval(reload, interval).unref();
  reload();
}

async function serve(opts) {
  const pkg = load(opts.proto);
  const healthPkg = load(path.join(__dirname, 'health.proto'));
  const health = new Health({ '': 'NOT_SERVING', [SERVICE]: 'NOT_SERVING' });
  const decider = new Decider({ node: opts['node-name'] });

  let last = null; // the text last loaded
  let busy = false;
  const reload = () => {
    if (busy) return;
    busy = true;
    fs.readFile(opts.policy, 'utf8', (err, text) => {
      busy = false;
      if (err) {
        if (last === null || err.code !== 'ENOENT') log(`reading ${opts.policy}: ${err.message}`);
        return;
      }
      if (text === last) return;
      last = text;
      let state;
      try {
        state = policy.compile(text);
      } catch (e) {
        if (!(e instanceof policy.PolicyError)) throw e;
        // Keep answering from the last good policy.
        log(`${opts.policy}: ${e.message}; keeping the previous policy`);
        return;
      }
      const gen = decider.publish(state);
      log(`loaded ${opts.policy}: ${state.endpoints.length} endpoints, generation ${gen}`);
      health.setAll('SERVING');
    });
  };

  const server = new grpc.Server();
  server.addService(pkg.tollgate.v1.DeciderService.service, decider.implementation());
  server.addService(healthPkg.grpc.health.v1.Health.service, health.implementation());
  await listen(server, opts.socket);
  log(`serving on ${opts.socket} for node ${JSON.stringify(opts['node-name'])}, instance ${decider.instance}`);
  watchFile(opts.policy, Number(opts['poll-interval-ms']), reload);

  const stop = (signal) => {
    log(`${signal}: shutting down`);
    health.setAll('NOT_SERVING');
    decider.close();
    health.close();
    const force = setTimeout(() => server.forceShutdown(), 2000);
    server.tryShutdown(() => {
      clearTimeout(force);
      fs.rmSync(opts.socket, { force: true });
      process.exit(0);
    });
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

function healthcheck(opts) {
  const healthPkg = load(path.join(__dirname, 'health.proto'));
  const client = new healthPkg.grpc.health.v1.Health(`unix:${opts.socket}`, grpc.credentials.createInsecure());
  client.Check({ service: SERVICE }, { deadline: Date.now() + 3000 }, (err, resp) => {
    if (err || resp.status !== 'SERVING') {
      process.stderr.write(`not serving: ${err ? err.message : resp.status}\n`);
      process.exit(1);
    }
    process.exit(0);
  });
}

function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      policy: { type: 'string' },
      socket: { type: 'string', default: '/run/tollgate/decider.sock' },
      'node-name': { type: 'string', default: process.env.NODE_NAME || os.hostname() },
      proto: { type: 'string', default: defaultProto() },
      'poll-interval-ms': { type: 'string', default: '1000' },
    },
  });
  const command = positionals[0] ?? 'serve';
  if (command === 'healthcheck') return healthcheck(values);
  if (command !== 'serve' || positionals.length > 1) throw new Error(`unknown command ${positionals.join(' ')} (want serve or healthcheck)`);
  if (!values.policy) throw new Error('--policy FILE is required');
  if (!(Number(values['poll-interval-ms']) > 0)) throw new Error('--poll-interval-ms must be a positive number');
  return serve(values);
}

Promise.resolve()
  .then(main)
  .catch((e) => {
    log(e.message);
    process.exit(2);
  });
