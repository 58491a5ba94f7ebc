#!/usr/bin/env node
// claudecluster-relay: TCP 127.0.0.1:PORT  ->  Unix socket, byte for byte.
//
// Why: the agent container runs with `--network none`, so the Claude Code CLI
// cannot reach any host. The worker instead bind-mounts a Unix socket served
// by its model gateway (plain HTTP/1.1); the CLI only speaks TCP
// (ANTHROPIC_BASE_URL=http://127.0.0.1:PORT), so this relay joins the two.
// It does not parse HTTP: every accepted connection gets its own Unix socket
// connection and the bytes are piped both ways as they arrive (no buffering,
// so streamed SSE responses reach the CLI incrementally).
//
// Usage: node relay.js [--port N] [--host H] [--socket PATH]
// Env:   CLAUDECLUSTER_RELAY_PORT (8787), CLAUDECLUSTER_RELAY_HOST (127.0.0.1),
//        CLAUDECLUSTER_GATEWAY_SOCKET (/run/claudecluster/gateway.sock),
//        CLAUDECLUSTER_RELAY_DEBUG=1 logs every connection to stderr.
// Never writes to stdout: the CLI's stream-json output shares the container's
// stdout. Diagnostics go to stderr.
'use strict';

const net = require('net');

function parseArgs(argv) {
  const opts = {
    port: Number(process.env.CLAUDECLUSTER_RELAY_PORT || 8787),
    host: process.env.CLAUDECLUSTER_RELAY_HOST || '127.0.0.1',
    socket: process.env.CLAUDECLUSTER_GATEWAY_SOCKET || '/run/claudecluster/gateway.sock',
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const v = argv[i + 1];
    if (a === '--port' && v !== undefined) { opts.port = Number(v); i++; }
    else if (a === '--host' && v !== undefined) { opts.host = v; i++; }
    else if (a === '--socket' && v !== undefined) { opts.socket = v; i++; }
    else { throw new Error(`unknown argument: ${a}`); }
  }
  if (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535) {
    throw new Error(`bad port: ${opts.port}`);
  }
  return opts;
}

const debug = process.env.CLAUDECLUSTER_RELAY_DEBUG === '1';
const log = (msg) => process.stderr.write(`claudecluster-relay: ${msg}\n`);

let opts;
try {
  opts = parseArgs(process.argv.slice(2));
} catch (err) {
  log(err.message);
  process.exit(2);
}

let nextId = 0;

// A Unix socket whose listen backlog is full refuses at once with EAGAIN
// (TCP would queue the SYN and retry by itself). Bursts of parallel requests
// from the CLI can hit that, so retry for a while before giving up.
const EAGAIN_RETRIES = 60;
const retryDelay = (attempt) => Math.min(5 * 2 ** attempt, 100); // ms, ~5 s total

function relay(client) {
  const id = ++nextId;
  // Small SSE events must not wait for Nagle's algorithm.
  client.setNoDelay(true);
  let upstream = null;
  let started = false;

  // Any error on either side ends both: a half-dead pair would only leave the
  // CLI waiting for a response that can never come.
  const fail = (side) => (err) => {
    if (debug || side === 'gateway') log(`#${id} ${side} error: ${err.code || err.message}`);
    client.destroy();
    if (upstream) upstream.destroy();
  };
  client.on('error', fail('client'));
  if (debug) client.on('close', () => log(`#${id} closed`));

  const connect = (first, attempt) => {
    const sock = net.createConnection({ path: opts.socket, allowHalfOpen: true });
    const early = (err) => {
      sock.destroy();
      if (client.destroyed) return;
      if (err.code === 'EAGAIN' && attempt < EAGAIN_RETRIES) {
        setTimeout(() => connect(first, attempt + 1), retryDelay(attempt));
      } else {
        fail('gateway')(err);
      }
    };
    sock.once('error', early);
    sock.once('connect', () => {
      sock.removeListener('error', early);
      if (client.destroyed) { sock.destroy(); return; }
      if (debug) log(`#${id} connected to ${opts.socket}${attempt ? ` after ${attempt} retries` : ''}`);
      upstream = sock;
      upstream.on('error', fail('gateway'));
      upstream.write(first);
      // pipe(): backpressure both ways, and end() (a FIN) is forwarded to the
      // other side when one side finishes sending: half-close is preserved
      // because both sockets allow half-open connections.
      client.pipe(upstream);
      upstream.pipe(client);
    });
  };

  // The gateway connection is opened on the first byte from the client, not
  // on accept. HTTP is client-first, so nothing changes for real requests,
  // but a bare connect-and-close (the entrypoint's readiness probe, health
  // checks) never reaches the gateway. The client stays paused (its bytes
  // wait in its socket buffer) until the gateway connection is up.
  client.once('data', (first) => {
    started = true;
    client.pause();
    connect(first, 0);
  });
  // Client closed without sending anything: just finish our side.
  client.on('end', () => { if (!started) client.end(); });
}

const server = net.createServer({ allowHalfOpen: true }, relay);
let listening = false;
server.on('error', (err) => {
  if (!listening) {
    log(`cannot listen on ${opts.host}:${opts.port}: ${err.code || err.message}`);
    process.exit(1);
  }
  // After start-up these are per-connection accept errors (EMFILE...):
  // keep serving the connections that work.
  log(`accept error: ${err.code || err.message}`);
});
server.listen({ port: opts.port, host: opts.host, backlog: 1024 }, () => {
  listening = true;
  if (debug) log(`listening on ${opts.host}:${opts.port} -> ${opts.socket}`);
});

// A broken pipe on stderr must not kill the relay mid-session.
process.stderr.on('error', () => {});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => { server.close(); process.exit(0); });
}
