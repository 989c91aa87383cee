// Helpers for the interop tests (*.test.mjs): child processes, tokens from the
// oidc-provider AS (as.mjs), a minimal MCP streamable-HTTP client, token tampering, DPoP
// (RFC 9449: bound tokens, proofs from the `dpop` package, hostile proofs signed by hand),
// and for the audit-log checks (audit.mjs) the per-server request ledger and the SECRETS set.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  KeyObject, constants as cryptoConstants, createHash, createPublicKey, generateKeyPairSync, randomUUID,
  sign as cryptoSign,
} from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as DPoP from 'dpop';
import { SignJWT, generateKeyPair } from 'jose';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');

export const CLIENT_ID = 'interop-client';
export const CLIENT_SECRET = 'interop-secret';
/** A second confidential client (another principal), see as.mjs. */
export const CLIENT_ID_2 = 'interop-client-2';
export const CLIENT_SECRET_2 = 'interop-secret-2';
export const OTHER_RESOURCE = 'http://127.0.0.1:1/other';
export const PROTOCOL_VERSION = '2025-06-18';

export const STARTUP_TIMEOUT_MS = 30_000;
export const REQUEST_TIMEOUT_MS = 15_000;

// ---------------------------------------------------------------------------
// child processes

const children = new Set();

export function killAll(signal = 'SIGTERM') {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill(signal);
      } catch {
        // already gone
      }
    }
  }
}

process.once('exit', () => killAll('SIGKILL'));
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    killAll('SIGKILL');
    process.exit(130);
  });
}

/**
 * SIGTERM, then waits up to `graceMs` for the exit; SIGKILL after that. Resolves to
 * `{ code, signal, forced }` (`forced`: it had to be SIGKILLed). Idempotent: a second call
 * returns the first one's promise.
 */
export function stopChild(child, graceMs = 3000) {
  child.stopping ??= stopChildOnce(child, graceMs);
  return child.stopping;
}

async function stopChildOnce(child, graceMs) {
  const outcome = (forced) => ({ code: child.exitCode, signal: child.signalCode, forced });
  if (child.exitCode !== null || child.signalCode !== null) {
    children.delete(child);
    return outcome(false);
  }
  child.stoppedOnPurpose = true;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  let timer;
  const timedOut = new Promise((resolve) => {
    timer = setTimeout(() => resolve('timeout'), graceMs);
  });
  let forced = false;
  if ((await Promise.race([exited, timedOut])) === 'timeout') {
    forced = true;
    child.kill('SIGKILL');
    await Promise.race([exited, new Promise((r) => setTimeout(r, graceMs))]);
  }
  clearTimeout(timer);
  children.delete(child);
  return outcome(forced);
}

// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;

/**
 * Spawns a process and resolves once a line of its stdout or stderr (ANSI colours
 * stripped) matches `ready`. Rejects (and kills it) if it exits first or `timeoutMs`
 * passes.
 */
export function spawnUntil(name, command, args, { ready, timeoutMs = STARTUP_TIMEOUT_MS, env, stdin = 'ignore' }) {
  const child = spawn(command, args, {
    env: { ...process.env, NO_COLOR: '1', ...env },
    stdio: [stdin, 'pipe', 'pipe'],
  });
  children.add(child);
  const log = { name, text: '' };
  const append = (chunk) => {
    log.text += chunk;
    if (log.text.length > 200_000) log.text = log.text.slice(-100_000);
  };
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');

  return new Promise((resolve, reject) => {
    let done = false;
    const finish = (err, match) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        child.stoppedOnPurpose = true;
        child.kill('SIGKILL');
        err.message += `\n--- ${name} output ---\n${log.text.slice(-8000)}`;
        reject(err);
      } else {
        resolve({ child, match, log });
      }
    };
    const timer = setTimeout(
      () => finish(new Error(`${name}: no line matching ${ready} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const watch = (stream) => {
      let buffered = '';
      stream.on('data', (chunk) => {
        append(chunk);
        if (done) return;
        buffered += chunk;
        let nl;
        while ((nl = buffered.indexOf('\n')) !== -1) {
          const line = buffered.slice(0, nl).replace(/\r$/, '').replace(ANSI, '');
          buffered = buffered.slice(nl + 1);
          const m = ready.exec(line);
          if (m) {
            finish(null, m);
            return;
          }
        }
      });
    };
    watch(child.stdout);
    watch(child.stderr);
    child.once('error', (err) => finish(new Error(`${name}: failed to start ${command}: ${err.message}`)));
    child.once('exit', (code, signal) => {
      if (!done) {
        finish(new Error(`${name} exited (code ${code}, signal ${signal}) before becoming ready`));
      } else if (!child.stoppedOnPurpose) {
        process.stderr.write(`\n[interop] ${name} exited unexpectedly (code ${code}, signal ${signal})\n`
          + `--- ${name} output ---\n${log.text.slice(-8000)}\n`);
      }
    });
  });
}

/** Process groups of runProcess children still running: killed when this process exits. */
const processGroups = new Set();
process.once('exit', () => {
  for (const pid of processGroups) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
});

/**
 * Runs a command to completion (for one-shot clients: the Python SDK client, the MCP
 * Inspector CLI). The child leads a process group of its own, so a timeout (SIGTERM, then
 * SIGKILL 3 s later) or the exit of this process also ends whatever it spawned. `input` is
 * written to its stdin. Resolves to `{ code, signal, stdout, stderr, timedOut, ms }`; rejects
 * only if the command cannot be started (with `name`, the command and the reason, e.g. ENOENT).
 * INTEROP_LOGS=1 echoes its stderr.
 */
export function runProcess(name, command, args, {
  input, timeoutMs = 60_000, cwd, env,
} = {}) {
  const started = Date.now();
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, NO_COLOR: '1', ...env },
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (c) => {
    stdout += c;
    if (stdout.length > 4_000_000) stdout = stdout.slice(-2_000_000);
  });
  child.stderr.on('data', (c) => {
    stderr += c;
    if (stderr.length > 400_000) stderr = stderr.slice(-200_000);
    if (process.env.INTEROP_LOGS) process.stderr.write(`[${name}] ${c}`);
  });
  child.stdin.on('error', () => {}); // EPIPE if it exits without reading
  child.stdin.end(input ?? '');
  const killGroup = (signal) => {
    try {
      process.kill(-child.pid, signal);
    } catch {
      // already gone
    }
  };
  return new Promise((resolve, reject) => {
    let timedOut = false;
    let hardKill;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup('SIGTERM');
      hardKill = setTimeout(() => killGroup('SIGKILL'), 3000);
    }, timeoutMs);
    child.once('spawn', () => processGroups.add(child.pid));
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${name}: cannot run ${command}: ${err.code ?? ''} ${err.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(hardKill);
      // Whatever it left behind in its group goes too.
      killGroup('SIGKILL');
      processGroups.delete(child.pid);
      resolve({
        code, signal, stdout, stderr, timedOut, ms: Date.now() - started,
      });
    });
  });
}

/** A one-line description of a runProcess result, with the tail of its output, for assertion messages. */
export function describeRun(name, run) {
  const why = run.timedOut ? 'timed out' : `exited with code ${run.code}, signal ${run.signal}`;
  return `${name} ${why} after ${run.ms} ms\n--- stderr ---\n${run.stderr.slice(-6000)}\n--- stdout ---\n${run.stdout.slice(-3000)}`;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function notesServerBin() {
  if (process.env.NOTES_SERVER_BIN) {
    const bin = path.resolve(REPO, process.env.NOTES_SERVER_BIN);
    if (!existsSync(bin)) throw new Error(`NOTES_SERVER_BIN=${bin} does not exist`);
    return bin;
  }
  const targetDir = process.env.CARGO_TARGET_DIR
    ? path.resolve(REPO, process.env.CARGO_TARGET_DIR)
    : path.join(REPO, 'target');
  const bin = path.join(targetDir, 'debug', 'examples', 'notes_server');
  if (!existsSync(bin)) {
    throw new Error(`${bin} not found: run \`cargo build --example notes_server --features testing\``
      + ' first or set NOTES_SERVER_BIN');
  }
  return bin;
}

/**
 * Starts as.mjs (access tokens signed with `alg`). `admin: true` (AS_ADMIN=1) adds the key
 * rotation admin server: `adminUrl` in the result (`POST ${adminUrl}/rotate`, see as.mjs).
 */
export async function startAuthorizationServer(alg, { admin = false } = {}) {
  const { child, match, log } = await spawnUntil(
    `as(${alg})`,
    process.execPath,
    [path.join(HERE, 'as.mjs'), '0'],
    {
      ready: /^issuer (http:\/\/127\.0\.0\.1:\d+)$/,
      env: { AS_ACCESS_TOKEN_ALG: alg, AS_EXIT_ON_STDIN_EOF: '1', ...(admin ? { AS_ADMIN: '1' } : {}) },
      stdin: 'pipe',
    },
  );
  const out = { child, log, issuer: match[1] };
  if (admin) {
    // as.mjs prints the admin line before the issuer line.
    const adminUrl = /^admin (http:\/\/127\.0\.0\.1:\d+)$/m.exec(log.text.replace(/\r/g, ''))?.[1];
    assert.ok(adminUrl, `as.mjs printed its admin URL:\n${log.text}`);
    out.adminUrl = adminUrl;
  }
  return out;
}

/** Grace period between SIGTERM and SIGKILL for notes_server (it flushes its audit log). */
export const NOTES_SERVER_STOP_GRACE_MS = 10_000;

/**
 * Starts examples/notes_server on a free port, trusting `issuer` (keys from its /jwks).
 * It always writes an audit log (`--audit-log`) to a fresh temporary file, `auditLog` in
 * the result; `requests` is the ledger of every request this process sent to it (see
 * trackRequest). Stop it with stopNotesServer (or stopChild) before reading the log.
 *
 * Options (all optional, for the policy tests):
 *   args     extra command-line arguments, e.g. ['--sessions']
 *   config   (resource, issuer) => TOML text: written to a temporary file and passed as
 *            `--config FILE` instead of `--issuer`/`--jwks-uri` (the file must then name
 *            the issuer itself); the file is removed when this process exits.
 *   jwksUri  false: `--issuer` alone, the JWKS URL is discovered from the issuer's metadata
 *            (default true: `--jwks-uri ISSUER/jwks`).
 *
 * `dpop` in the result is the `--dpop` mode given in `args` ('off' without one); the audit
 * checks then expect a DPoP challenge beside the Bearer one.
 */
export async function startNotesServer(issuer, { args: extraArgs = [], config, jwksUri = true } = {}) {
  const bin = notesServerBin();
  let lastErr;
  // The free port is picked, released and then handed to the server: retry if
  // someone else grabbed it in between.
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const port = await freePort();
    const resource = `http://127.0.0.1:${port}/mcp`;
    try {
      let trust;
      if (config !== undefined) trust = ['--config', writeTempConfig(config(resource, issuer))];
      else if (jwksUri) trust = ['--issuer', issuer, '--jwks-uri', `${issuer}/jwks`];
      else trust = ['--issuer', issuer];
      const auditLog = path.join(tempDir(), 'audit.jsonl');
      const { child, match, log } = await spawnUntil('notes_server', bin, [
        '--listen', `127.0.0.1:${port}`,
        '--resource', resource,
        ...trust,
        '--audit-log', auditLog,
        ...extraArgs,
      ], { ready: /listening on http:\/\/(\[[0-9A-Fa-f:]+\]:\d+|[0-9A-Za-z.-]+:\d+)/ });
      const addr = match[1];
      assert.equal(addr.replace(/\/+$/, ''), `127.0.0.1:${port}`, `notes_server listens on ${addr}, expected port ${port}`);
      const dpopAt = extraArgs.lastIndexOf('--dpop');
      const server = {
        child, log, port, resource, origin: `http://127.0.0.1:${port}`, auditLog, requests: [],
        dpop: dpopAt === -1 ? 'off' : String(extraArgs[dpopAt + 1]),
      };
      notesServers.set(server.origin, server);
      return server;
    } catch (err) {
      lastErr = err;
      // Only a lost race for the port is worth another try.
      if (!/in use|EADDRINUSE|AddrInUse|os error 98/i.test(err.message)) throw err;
    }
  }
  throw lastErr;
}

/**
 * Stops a notes_server started by startNotesServer: SIGTERM (it shuts down gracefully and
 * flushes its audit log), SIGKILL after NOTES_SERVER_STOP_GRACE_MS. Resolves to
 * `{ code, signal, forced }`.
 */
export function stopNotesServer(server) {
  return stopChild(server.child, NOTES_SERVER_STOP_GRACE_MS);
}

/** The audit log of a stopped notes_server: its text and the parsed events (one a line). */
export function readAuditLog(server) {
  const text = existsSync(server.auditLog) ? readFileSync(server.auditLog, 'utf8') : '';
  const lines = text.split('\n');
  assert.equal(lines.pop(), '', `${server.auditLog}: ends with a newline (or is empty)`);
  const events = lines.map((line, i) => {
    try {
      return JSON.parse(line);
    } catch (err) {
      throw new Error(`${server.auditLog}:${i + 1}: not JSON (${err.message}): ${line.slice(0, 200)}`);
    }
  });
  return { text, events };
}

// INTEROP_KEEP_AUDIT=1 keeps the temporary directories (audit logs, configs) and prints them.
const tempDirs = [];
process.once('exit', () => {
  for (const dir of tempDirs) {
    if (process.env.INTEROP_KEEP_AUDIT) process.stderr.write(`[interop] kept ${dir}\n`);
    else rmSync(dir, { recursive: true, force: true });
  }
});

function tempDir() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tower-mcp-auth-interop-'));
  tempDirs.push(dir);
  return dir;
}

function writeTempConfig(text) {
  const file = path.join(tempDir(), 'notes_server.toml');
  writeFileSync(file, text);
  return file;
}

// ---------------------------------------------------------------------------
// secrets: what no audit log may contain

/**
 * Every access token, client secret and Authorization header value this process used or
 * received (tokens from the AS, tampered and garbage tokens, header values sent). getToken,
 * the tampering helpers and every tracked request add to it; audit logs are checked against
 * it (audit.mjs).
 */
export const SECRETS = new Set([CLIENT_SECRET, CLIENT_SECRET_2]);

/** Adds `value` (if a non-empty string) to SECRETS; returns it. */
export function recordSecret(value) {
  if (typeof value === 'string' && value !== '') SECRETS.add(value);
  return value;
}

/** An Authorization value and the credentials in it (for Basic also the decoded pair). */
export function recordAuthorization(value) {
  if (typeof value !== 'string' || value === '') return;
  recordSecret(value);
  const m = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]+(.*)$/.exec(value);
  if (!m) return;
  recordSecret(m[2].trim());
  if (/^basic$/i.test(m[1])) {
    const pair = Buffer.from(m[2].trim(), 'base64').toString('utf8');
    recordSecret(pair);
    if (pair.includes(':')) recordSecret(pair.slice(pair.indexOf(':') + 1));
  }
}

// ---------------------------------------------------------------------------
// request ledger: every request sent to a notes_server of this process

/** origin → the server object of startNotesServer. */
const notesServers = new Map();
let requestCounter = 0;

/** base64url(SHA-256(text)): token thumbprints and session id hashes in audit events. */
export const sha256b64u = (text) => createHash('sha256').update(text, 'utf8').digest('base64url');

/** All values of header `name` in a Headers or a plain object (values may be arrays). */
function headerValues(headers, name) {
  if (!headers) return [];
  if (headers instanceof Headers) {
    const v = headers.get(name);
    return v === null ? [] : [v];
  }
  const out = [];
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() !== name || v === undefined || v === null) continue;
    out.push(...(Array.isArray(v) ? v.map(String) : [String(v)]));
  }
  return out;
}

/**
 * Records one request about to be sent: the credentials in it (Authorization, DPoP proofs)
 * go to SECRETS, and if `url` is a notes_server of this process, an entry is appended to
 * its `requests` ledger and returned (else undefined). `bearer` / `dpopToken` is the token
 * of a single `Authorization: Bearer` / `DPoP` header, `dpopProofs` the `DPoP` header values. The caller must send `x-request-id: entry.id` (the audit
 * event's `request_id`) and call finishRequest with what it got back. `entry.expect` may
 * be filled in (expectAudit) with what the audit event must say. `id` overrides the generated
 * request id, for requests another process sent with an `x-request-id` of its own (the Python
 * SDK suite replays its client's ledger this way).
 */
export function trackRequest(url, { method = 'GET', headers, body, id } = {}) {
  for (const v of headerValues(headers, 'authorization')) recordAuthorization(v);
  for (const v of headerValues(headers, 'dpop')) recordSecret(v);
  const u = new URL(url);
  const server = notesServers.get(u.origin);
  if (!server) return undefined;
  requestCounter += 1;
  const authorization = headerValues(headers, 'authorization');
  const bearer = authorization.length === 1 ? /^bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization[0])?.[1] : undefined;
  const dpopToken = authorization.length === 1 ? /^dpop[ \t]+(\S+)[ \t]*$/i.exec(authorization[0])?.[1] : undefined;
  const entry = {
    id: id ?? `interop-${process.pid}-${requestCounter}`,
    method: method.toUpperCase(),
    path: u.pathname,
    authorization,
    bearer,
    dpopToken,
    dpopProofs: headerValues(headers, 'dpop'),
    sessionIds: headerValues(headers, 'mcp-session-id'),
    body: typeof body === 'string' ? body : undefined,
    status: undefined,
    wwwAuthenticate: null,
    error: undefined,
    expect: {},
  };
  server.requests.push(entry);
  return entry;
}

/**
 * Declares that requests carrying `x-request-id: requestId` reach `server` from a client this
 * process does not see request by request (another process sending one fixed header on all
 * its requests, e.g. the MCP Inspector CLI). The audit check (audit.mjs) then accepts events
 * with that request_id without a ledger entry each, and checks them as a group instead:
 *
 *   token       the bearer token the client sent (undefined: none; every event must then be
 *               a missing_credentials denial), recorded in SECRETS with its header value;
 *   ops         [[method, target], ...]: operations that must appear among the events;
 *   refused     { target: 'scope ...' }: tools/call targets that must be 403
 *               insufficient_scope with these required scopes (set comparison);
 *   minEvents   at least this many events (default: ops.length, at least 1).
 *
 * Returns the registration (`events` is filled in by the check).
 */
export function registerExternalClient(server, {
  requestId, token, ops = [], refused = {}, minEvents, label = requestId,
}) {
  assert.ok(/^[!-~]{1,128}$/.test(requestId), `registerExternalClient: request id ${JSON.stringify(requestId)}`);
  recordSecret(token);
  if (token !== undefined) recordAuthorization(`Bearer ${token}`);
  server.externalClients ??= [];
  assert.ok(!server.externalClients.some((c) => c.requestId === requestId), `request id ${requestId} registered twice`);
  const client = {
    requestId, token, ops, refused, minEvents: minEvents ?? Math.max(1, ops.length), label, events: [],
  };
  server.externalClients.push(client);
  return client;
}

/** What the client saw: the status and the WWW-Authenticate header (or the error). */
export function finishRequest(entry, { status, wwwAuthenticate = null, error } = {}) {
  if (!entry) return;
  if (error !== undefined) {
    entry.error = error;
    return;
  }
  entry.status = status;
  entry.wwwAuthenticate = wwwAuthenticate;
}

/** Adds to what the audit event of a tracked request must say (see audit.mjs). */
export function expectAudit(res, expect) {
  assert.ok(res?.audit, 'expectAudit: a response of a tracked request to a notes_server');
  Object.assign(res.audit.expect, expect);
  return res;
}

const ledgerEntries = new WeakMap();

/** The ledger entry of a Response returned by trackedFetch (undefined for other hosts). */
export const ledgerEntry = (res) => ledgerEntries.get(res);

/**
 * fetch that tracks requests to notes_servers (adds `x-request-id`, see trackRequest) and
 * records every credential it sends or receives (Authorization, a form `client_secret`,
 * the tokens of a JSON token response).
 */
export async function trackedFetch(input, init = {}) {
  if (input instanceof Request) throw new Error('trackedFetch: pass a URL and init, not a Request');
  const url = String(input);
  const method = (init.method ?? 'GET').toUpperCase();
  const headers = new Headers(init.headers);
  let form;
  if (init.body instanceof URLSearchParams) form = init.body;
  else if (typeof init.body === 'string' && /x-www-form-urlencoded/i.test(headers.get('content-type') ?? '')) form = new URLSearchParams(init.body);
  recordSecret(form?.get('client_secret') ?? undefined);
  const entry = trackRequest(url, { method, headers, body: init.body });
  if (entry) headers.set('x-request-id', entry.id);
  let res;
  try {
    res = await fetch(url, { ...init, headers });
  } catch (err) {
    finishRequest(entry, { error: err });
    throw err;
  }
  finishRequest(entry, { status: res.status, wwwAuthenticate: res.headers.get('www-authenticate') });
  if (entry) ledgerEntries.set(res, entry);
  if (!entry && /json/i.test(res.headers.get('content-type') ?? '') && /\/token$/.test(new URL(url).pathname)) {
    try {
      const json = await res.clone().json();
      for (const key of ['access_token', 'refresh_token', 'id_token']) recordSecret(json[key]);
    } catch {
      // not a token response
    }
  }
  return res;
}

// ---------------------------------------------------------------------------
// tokens

const b64u = {
  enc: (buf) => Buffer.from(buf).toString('base64url'),
  dec: (s) => Buffer.from(s, 'base64url'),
  json: (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8')),
  fromJson: (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url'),
};

export function decodeJwt(token) {
  const parts = token.split('.');
  assert.equal(parts.length, 3, 'a JWS compact serialization has 3 parts');
  return { header: b64u.json(parts[0]), payload: b64u.json(parts[1]), parts };
}

export async function getToken(issuer, {
  resource, scope, auth = 'basic', clientId = CLIENT_ID, clientSecret = CLIENT_SECRET,
} = {}) {
  const body = new URLSearchParams({ grant_type: 'client_credentials' });
  if (resource !== undefined) body.set('resource', resource);
  if (scope !== undefined) body.set('scope', scope);
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (auth === 'basic') {
    headers.authorization = `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString('base64')}`;
  } else {
    body.set('client_id', clientId);
    body.set('client_secret', clientSecret);
  }
  recordSecret(clientSecret);
  const res = await trackedFetch(`${issuer}/token`, {
    method: 'POST', headers, body, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const json = await res.json();
  recordSecret(json.access_token);
  assert.equal(res.status, 200, `token endpoint: ${res.status} ${JSON.stringify(json)}`);
  assert.equal(json.token_type, 'Bearer');
  return json;
}

// ---------------------------------------------------------------------------
// MCP over streamable HTTP

/** Parses a complete or partial SSE text; returns [events, rest]. */
export function parseSse(text) {
  const events = [];
  const blocks = text.replace(/\r\n?/g, '\n').split('\n\n');
  const rest = blocks.pop();
  for (const block of blocks) {
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
    }
    if (data.length) events.push(data.join('\n'));
  }
  return [events, rest];
}

/**
 * POSTs one JSON-RPC message. For requests (with `id`) reads the JSON body or the
 * SSE stream until the response with that id arrives.
 */
export async function mcpPost(url, message, { token, sessionId, protocolVersion, headers: extra } = {}) {
  const headers = {
    accept: 'application/json, text/event-stream',
    'content-type': 'application/json',
    ...extra,
  };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  if (sessionId) headers['mcp-session-id'] = sessionId;
  if (protocolVersion) headers['mcp-protocol-version'] = protocolVersion;

  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error(`timeout: POST ${url} ${message.method}`)), REQUEST_TIMEOUT_MS);
  try {
    const res = await trackedFetch(url, {
      method: 'POST', headers, body: JSON.stringify(message), signal: controller.signal,
    });
    const out = {
      audit: ledgerEntry(res),
      status: res.status,
      headers: res.headers,
      wwwAuthenticate: res.headers.get('www-authenticate'),
      sessionId: res.headers.get('mcp-session-id'),
      messages: [],
      response: undefined,
      text: '',
    };
    const type = (res.headers.get('content-type') || '').toLowerCase();
    if (res.status >= 200 && res.status < 300 && type.startsWith('text/event-stream')) {
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let pending = '';
      while (out.response === undefined) {
        const { value, done } = await reader.read();
        if (done) break;
        const chunk = decoder.decode(value, { stream: true });
        out.text += chunk;
        const [events, rest] = parseSse(pending + chunk);
        pending = rest;
        for (const data of events) {
          if (!data.trim()) continue;
          const msg = JSON.parse(data);
          out.messages.push(msg);
          if (message.id !== undefined && msg.id === message.id && !msg.method) out.response = msg;
        }
      }
      await reader.cancel().catch(() => {});
    } else {
      out.text = await res.text();
      if (type.startsWith('application/json') && out.text.trim()) {
        const parsed = JSON.parse(out.text);
        out.messages = Array.isArray(parsed) ? parsed : [parsed];
        out.response = out.messages.find((m) => m.id === message.id && !m.method);
      }
    }
    return out;
  } finally {
    clearTimeout(timer);
  }
}

let nextId = 1;
export const rpc = (method, params) => ({
  jsonrpc: '2.0', id: nextId++, method, ...(params === undefined ? {} : { params }),
});

export const initializeRequest = () => rpc('initialize', {
  protocolVersion: PROTOCOL_VERSION,
  capabilities: {},
  clientInfo: { name: 'tower-mcp-auth-interop', version: '0.0.0' },
});

/** initialize + notifications/initialized; returns the session to use afterwards. */
export async function openSession(url, token) {
  const init = await mcpPost(url, initializeRequest(), { token });
  assert.equal(init.status, 200, `initialize: ${init.status} ${init.wwwAuthenticate ?? ''} ${init.text}`);
  assert.ok(init.response, `initialize: no JSON-RPC response in ${JSON.stringify(init.text)}`);
  assert.equal(init.response.error, undefined, `initialize error: ${JSON.stringify(init.response.error)}`);
  assert.ok(init.response.result?.protocolVersion, 'initialize result has a protocolVersion');
  const session = {
    token,
    sessionId: init.sessionId ?? undefined,
    protocolVersion: init.response.result.protocolVersion,
  };
  const note = await mcpPost(url, { jsonrpc: '2.0', method: 'notifications/initialized' }, session);
  assert.ok(note.status >= 200 && note.status < 300, `notifications/initialized: ${note.status} ${note.text}`);
  return { session, init };
}

export function resultText(result) {
  const parts = [];
  for (const c of result?.content ?? []) {
    if (c.type === 'text') parts.push(c.text);
  }
  if (result?.structuredContent !== undefined) parts.push(JSON.stringify(result.structuredContent));
  return parts.join('\n');
}

// ---------------------------------------------------------------------------
// token tampering

export function withPayload(token, change) {
  const { header, payload, parts } = decodeJwt(token);
  return recordSecret(`${parts[0]}.${b64u.fromJson(change({ ...payload }, header))}.${parts[2]}`);
}

export function withFlippedSignatureBit(token) {
  const { parts } = decodeJwt(token);
  const sig = b64u.dec(parts[2]);
  sig[Math.floor(sig.length / 2)] ^= 0x01;
  return recordSecret(`${parts[0]}.${parts[1]}.${b64u.enc(sig)}`);
}

export function withAlgNone(token) {
  const { header, parts } = decodeJwt(token);
  return recordSecret(`${b64u.fromJson({ ...header, alg: 'none' })}.${parts[1]}.`);
}

/** Same header (kid included) and claims, signed by a key the AS never published. */
export async function withForeignKey(token) {
  const { header, payload } = decodeJwt(token);
  const { privateKey } = await generateKeyPair(header.alg);
  return recordSecret(await new SignJWT(payload).setProtectedHeader(header).sign(privateKey));
}

/** Classic alg confusion: HS256 keyed with the AS's published public key (as PEM). */
export async function withHs256FromPublicKey(token, issuer) {
  const { header, payload } = decodeJwt(token);
  const jwks = await (await fetch(`${issuer}/jwks`, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })).json();
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  assert.ok(jwk, `kid ${header.kid} is in the JWKS`);
  const pem = createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
  return recordSecret(await new SignJWT(payload).setProtectedHeader({ ...header, alg: 'HS256' }).sign(new TextEncoder().encode(pem)));
}

// ---------------------------------------------------------------------------
// WWW-Authenticate (RFC 9110 §11.6.1)

/**
 * Parses a WWW-Authenticate value into challenges: [{ scheme, params, token68 }], where
 * `params` maps lower-cased auth-param names to their values (quoted-strings unescaped).
 * Throws on anything that is not well-formed, and on a repeated parameter.
 */
export function parseWwwAuthenticate(value) {
  const s = String(value);
  let i = 0;
  const TOKEN = /[!#$%&'*+.^_`|~0-9A-Za-z-]/;
  const fail = (why) => {
    throw new Error(`malformed WWW-Authenticate at ${i} (${why}): ${JSON.stringify(s)}`);
  };
  const ows = () => {
    while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i += 1;
  };
  const token = () => {
    const start = i;
    while (i < s.length && TOKEN.test(s[i])) i += 1;
    return s.slice(start, i);
  };
  const quoted = () => {
    if (s[i] !== '"') fail('expected "');
    i += 1;
    let out = '';
    for (;;) {
      if (i >= s.length) fail('unterminated quoted-string');
      const c = s[i];
      i += 1;
      if (c === '"') return out;
      if (c === '\\') {
        if (i >= s.length) fail('dangling backslash');
        out += s[i];
        i += 1;
      } else {
        out += c;
      }
    }
  };
  const challenges = [];
  for (;;) {
    // empty list elements are allowed (RFC 9110 §5.6.1)
    while (i < s.length && (s[i] === ',' || s[i] === ' ' || s[i] === '\t')) i += 1;
    if (i >= s.length) break;
    const scheme = token();
    if (!scheme) fail('expected auth-scheme');
    const challenge = { scheme, params: {}, token68: undefined };
    challenges.push(challenge);
    if (i >= s.length || s[i] === ',') continue;
    if (s[i] !== ' ') fail('expected SP after auth-scheme');
    ows();
    // token68: only if nothing but OWS follows before the end or a comma
    const t68 = /^[A-Za-z0-9\-._~+/]+=*/.exec(s.slice(i));
    if (t68 && /^[ \t]*(,|$)/.test(s.slice(i + t68[0].length))) {
      challenge.token68 = t68[0];
      i += t68[0].length;
      continue;
    }
    // 1#auth-param
    for (;;) {
      ows();
      const save = i;
      const name = token();
      ows();
      if (!name || s[i] !== '=') {
        if (Object.keys(challenge.params).length === 0) fail('expected auth-param');
        i = save; // the next challenge's scheme
        break;
      }
      i += 1;
      ows();
      const val = s[i] === '"' ? quoted() : token();
      if (s[i - 1] !== '"' && val === '') fail(`empty value for ${name}`);
      const key = name.toLowerCase();
      if (Object.hasOwn(challenge.params, key)) fail(`repeated parameter ${key}`);
      challenge.params[key] = val;
      ows();
      if (i >= s.length) break;
      if (s[i] !== ',') fail('expected , after an auth-param');
      while (i < s.length && (s[i] === ',' || s[i] === ' ' || s[i] === '\t')) i += 1;
      if (i >= s.length) break;
    }
  }
  return challenges;
}

/** The single Bearer challenge of a response (asserts there is exactly one challenge). */
export function bearerChallenge(value) {
  assert.ok(value, 'a WWW-Authenticate header');
  const challenges = parseWwwAuthenticate(value);
  assert.equal(challenges.length, 1, `exactly one challenge in ${JSON.stringify(value)}`);
  const [c] = challenges;
  assert.equal(c.scheme.toLowerCase(), 'bearer', `Bearer scheme in ${JSON.stringify(value)}`);
  assert.equal(c.token68, undefined, `no token68 in ${JSON.stringify(value)}`);
  return c.params;
}

// ---------------------------------------------------------------------------
// raw HTTP

/**
 * One HTTP request with a timeout; reads the whole body (an SSE body only up to its first
 * event with data, then the stream is dropped). Returns status, headers, text and the parsed
 * JSON (`json`: the body, or the data of that SSE event; undefined if it is not JSON).
 */
export async function httpRequest(url, { method = 'POST', headers = {}, body } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error(`timeout: ${method} ${url}`)), REQUEST_TIMEOUT_MS);
  try {
    const res = await trackedFetch(url, {
      method, headers, body, signal: controller.signal,
    });
    const type = (res.headers.get('content-type') || '').toLowerCase();
    let text = '';
    if (type.startsWith('text/event-stream') && res.body) {
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
        if (parseSse(text)[0].some((data) => data.trim())) break;
      }
      await reader.cancel().catch(() => {});
    }
    if (!type.startsWith('text/event-stream')) text = await res.text();
    const payload = type.startsWith('text/event-stream')
      ? (parseSse(text)[0].find((data) => data.trim()) ?? '')
      : text;
    let json;
    try {
      json = payload.trim() ? JSON.parse(payload) : undefined;
    } catch {
      json = undefined;
    }
    return {
      audit: ledgerEntry(res), status: res.status, headers: res.headers, wwwAuthenticate: res.headers.get('www-authenticate'), text, json,
    };
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------
// DPoP (RFC 9449)
//
// A DPoP key pair: { alg, privateKey, publicKey, jwk, thumbprint }. ES256, RS256, PS256 and
// Ed25519 keys come from the `dpop` package (WebCrypto CryptoKeys; its proofs are the normal
// ones); ES384 and EdDSA (Ed25519 under the older alg name), which it does not make, are
// node:crypto KeyObjects and their proofs are signed here. `jwk` is the public JWK that goes
// into proof headers, `thumbprint` its RFC 7638 SHA-256 thumbprint (the `cnf.jkt` of tokens
// bound to it), computed here independently of the package and of the AS.

/** Proof algs the `dpop` package signs. */
const DPOP_PACKAGE_ALGS = new Set(['ES256', 'RS256', 'PS256', 'Ed25519']);
/** Every proof alg these helpers can sign. */
export const DPOP_ALGS = ['ES256', 'ES384', 'EdDSA', 'Ed25519', 'PS256', 'RS256'];

const toKeyObject = (key) => (key instanceof KeyObject ? key : KeyObject.from(key));

/** The public JWK of a key (only the RFC 7638 members: kty, crv, x, y, n, e). */
export function publicJwk(key) {
  const obj = toKeyObject(key);
  const full = (obj.type === 'public' ? obj : createPublicKey(obj)).export({ format: 'jwk' });
  const out = {};
  for (const k of ['kty', 'crv', 'x', 'y', 'n', 'e']) if (full[k] !== undefined) out[k] = full[k];
  return out;
}

/** RFC 7638 JWK SHA-256 thumbprint, base64url. */
export function jwkThumbprint(jwk) {
  const members = {
    EC: ['crv', 'kty', 'x', 'y'], OKP: ['crv', 'kty', 'x'], RSA: ['e', 'kty', 'n'],
  }[jwk.kty];
  assert.ok(members, `jwkThumbprint: unsupported kty ${jwk.kty}`);
  const canonical = `{${members.map((m) => `${JSON.stringify(m)}:${JSON.stringify(jwk[m])}`).join(',')}}`;
  return createHash('sha256').update(canonical, 'utf8').digest('base64url');
}

/** A fresh DPoP key pair for `alg` (one of DPOP_ALGS), see above. */
export async function generateDpopKeyPair(alg = 'ES256') {
  let pair;
  if (DPOP_PACKAGE_ALGS.has(alg)) {
    pair = await DPoP.generateKeyPair(alg);
  } else if (alg === 'ES384') {
    pair = generateKeyPairSync('ec', { namedCurve: 'P-384' });
  } else if (alg === 'EdDSA') {
    pair = generateKeyPairSync('ed25519');
  } else {
    throw new Error(`generateDpopKeyPair: unsupported alg ${alg} (${DPOP_ALGS.join(', ')})`);
  }
  const jwk = publicJwk(pair.publicKey);
  return {
    alg, privateKey: pair.privateKey, publicKey: pair.publicKey, jwk, thumbprint: jwkThumbprint(jwk),
  };
}

/**
 * Signs a JWS (compact) over `header` and `payload` with node:crypto. Either may be an object
 * (JSON-encoded) or a string (used as the exact JSON text, e.g. with duplicate members).
 * `alg` (default header.alg): ES256, ES384, EdDSA/Ed25519, RS256, PS256; 'none' gives an
 * empty signature. Nothing is checked: header and key may disagree on purpose.
 */
export function signJws(header, payload, privateKey, alg = header.alg) {
  const enc = (part) => Buffer.from(typeof part === 'string' ? part : JSON.stringify(part), 'utf8').toString('base64url');
  const input = `${enc(header)}.${enc(payload)}`;
  if (alg === 'none') return `${input}.`;
  const key = toKeyObject(privateKey);
  const data = Buffer.from(input, 'ascii');
  let sig;
  switch (alg) {
    case 'ES256': sig = cryptoSign('sha256', data, { key, dsaEncoding: 'ieee-p1363' }); break;
    case 'ES384': sig = cryptoSign('sha384', data, { key, dsaEncoding: 'ieee-p1363' }); break;
    case 'EdDSA': case 'Ed25519': sig = cryptoSign(null, data, key); break;
    case 'RS256': sig = cryptoSign('sha256', data, key); break;
    case 'PS256': sig = cryptoSign('sha256', data, {
      key, padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: 32,
    }); break;
    default: throw new Error(`signJws: unsupported alg ${alg}`);
  }
  return `${input}.${sig.toString('base64url')}`;
}

/**
 * A proof signed here, for hostile cases: the normal header `{ typ: 'dpop+jwt', alg, jwk }`
 * and claims `{ jti, htm, htu, iat, ath?, nonce? }` (ath = base64url(SHA-256(accessToken))),
 * then `header` / `claims` merged over them (a member set to undefined is removed), signed
 * with `signWith` (default the pair's own private key) under `alg` (default the header's).
 * Recorded in SECRETS.
 *
 *   craftDpopProof(kp, { htm: 'POST', htu, accessToken, claims: { htm: 'GET' } })
 *   craftDpopProof(kp, { htm: 'POST', htu, accessToken, header: { typ: 'JWT' } })
 *   craftDpopProof(kp, { htm: 'POST', htu, accessToken, claims: { jti: undefined } })
 */
export function craftDpopProof(keyPair, {
  htm = 'POST', htu, accessToken, nonce, jti = randomUUID(), iat = Math.floor(Date.now() / 1000),
  header = {}, claims = {}, signWith = keyPair.privateKey, alg,
} = {}) {
  const merge = (base, over) => {
    const out = { ...base, ...over };
    for (const [k, v] of Object.entries(out)) if (v === undefined) delete out[k];
    return out;
  };
  const h = merge({ typ: 'dpop+jwt', alg: keyPair.alg, jwk: keyPair.jwk }, header);
  const c = merge({
    jti, htm, htu, iat, ath: accessToken === undefined ? undefined : sha256b64u(accessToken), nonce,
  }, claims);
  return recordSecret(signJws(h, c, signWith, alg ?? h.alg));
}

/**
 * A normal proof for one request: from the `dpop` package (fresh jti, iat now) when it can
 * make it, else (ES384, EdDSA, or a fixed `jti` / `iat` asked for) signed here the same way.
 * `accessToken` adds `ath`, `nonce` the server's nonce. Recorded in SECRETS.
 */
export async function dpopProof(keyPair, {
  htm = 'POST', htu, accessToken, nonce, jti, iat,
} = {}) {
  assert.equal(typeof htu, 'string', 'dpopProof: htu');
  if (jti === undefined && iat === undefined && DPOP_PACKAGE_ALGS.has(keyPair.alg) && !(keyPair.privateKey instanceof KeyObject)) {
    return recordSecret(await DPoP.generateProof(keyPair, htu, htm, nonce, accessToken));
  }
  return craftDpopProof(keyPair, {
    htm, htu, accessToken, nonce, ...(jti === undefined ? {} : { jti }), ...(iat === undefined ? {} : { iat }),
  });
}

/**
 * A DPoP-bound access token by client credentials: the token request carries a proof for
 * `POST ISSUER/token` made with `keyPair` (default: a fresh ES256 pair). If the AS answers
 * `use_dpop_nonce` (as.mjs with AS_DPOP_NONCES=1) the request is repeated once with its
 * `DPoP-Nonce`. Asserts `token_type: "DPoP"` and `cnf.jkt` = the key's thumbprint. Returns
 * the token response plus `keyPair` and `jkt`. `as`: the issuer URL or an object with `issuer`.
 */
export async function getDpopToken(as, {
  resource, scope, keyPair, auth = 'basic', clientId = CLIENT_ID, clientSecret = CLIENT_SECRET,
} = {}) {
  const issuer = typeof as === 'string' ? as : as.issuer;
  const kp = keyPair ?? await generateDpopKeyPair('ES256');
  const body = new URLSearchParams({ grant_type: 'client_credentials' });
  if (resource !== undefined) body.set('resource', resource);
  if (scope !== undefined) body.set('scope', scope);
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (auth === 'basic') {
    headers.authorization = `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString('base64')}`;
  } else {
    body.set('client_id', clientId);
    body.set('client_secret', clientSecret);
  }
  recordSecret(clientSecret);
  let nonce;
  for (let attempt = 0; ; attempt += 1) {
    headers.dpop = await dpopProof(kp, { htm: 'POST', htu: `${issuer}/token`, nonce });
    const res = await trackedFetch(`${issuer}/token`, {
      method: 'POST', headers, body, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    const json = await res.json();
    recordSecret(json.access_token);
    const fresh = res.headers.get('dpop-nonce');
    if (res.status === 400 && json.error === 'use_dpop_nonce' && fresh && attempt === 0) {
      nonce = fresh;
      continue;
    }
    assert.equal(res.status, 200, `token endpoint (DPoP): ${res.status} ${JSON.stringify(json)}`);
    assert.equal(json.token_type, 'DPoP', `token_type of a DPoP-bound token: ${JSON.stringify(json)}`);
    const jkt = json.access_token.includes('.') ? decodeJwt(json.access_token).payload.cnf?.jkt : undefined;
    if (resource !== undefined) assert.equal(jkt, kp.thumbprint, 'cnf.jkt = the proof key\'s RFC 7638 thumbprint');
    return { ...json, keyPair: kp, jkt };
  }
}

/**
 * The challenges of a WWW-Authenticate value (or of several header fields, joined):
 * `{ bearer, dpop, byScheme, order, list }`, each challenge `{ scheme, params, token68 }`
 * (see parseWwwAuthenticate), `byScheme` keyed by lower-cased scheme, `order` the schemes as
 * sent. Asserts no scheme is repeated.
 */
export function authChallenges(value) {
  const list = parseWwwAuthenticate(Array.isArray(value) ? value.join(', ') : value);
  const byScheme = {};
  for (const c of list) {
    const key = c.scheme.toLowerCase();
    assert.ok(!Object.hasOwn(byScheme, key), `one ${c.scheme} challenge in ${JSON.stringify(value)}`);
    byScheme[key] = c;
  }
  return {
    bearer: byScheme.bearer, dpop: byScheme.dpop, byScheme, order: list.map((c) => c.scheme.toLowerCase()), list,
  };
}

/**
 * One POST to a notes_server (`server` object or its resource URL) with node:http, so that
 * a header given as an array goes out as repeated header lines (two `DPoP` headers).
 * Headers: Accept, Content-Type: application/json, Mcp-Protocol-Version,
 * `Authorization: ${scheme} ${token}` (scheme 'DPoP' unless given; none without `token`),
 * `DPoP: proof` (none without `proof`; an array → one line each), then `extraHeaders`
 * (undefined removes one). `body` is a JSON-RPC message (object) or raw text. Tracked like
 * every request (audit ledger; token and proofs go to SECRETS).
 *
 * Returns { audit, status, headers, wwwAuthenticate (fields joined by ", ", or null),
 * wwwAuthenticateFields (array), challenges (authChallenges of them, or undefined),
 * dpopNonce, text, messages, response (the JSON-RPC answer to the body's id) }.
 */
export async function mcpPostDpop(server, {
  token, proof, body, extraHeaders = {}, scheme = 'DPoP', protocolVersion = PROTOCOL_VERSION, sessionId,
} = {}) {
  const url = typeof server === 'string' ? server : server.resource;
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  const headers = {
    accept: 'application/json, text/event-stream',
    'content-type': 'application/json',
    'mcp-protocol-version': protocolVersion,
  };
  if (token !== undefined) headers.authorization = `${scheme} ${token}`;
  if (proof !== undefined) headers.dpop = proof;
  if (sessionId !== undefined) headers['mcp-session-id'] = sessionId;
  for (const [k, v] of Object.entries(extraHeaders)) {
    if (v === undefined) delete headers[k.toLowerCase()];
    else headers[k.toLowerCase()] = v;
  }
  recordSecret(token);
  const entry = trackRequest(url, { method: 'POST', headers, body: text });
  if (entry) headers['x-request-id'] = entry.id;
  headers['content-length'] = Buffer.byteLength(text);
  const u = new URL(url);
  let res;
  try {
    res = await new Promise((resolve, reject) => {
      const req = http.request({
        host: u.hostname, port: u.port, path: `${u.pathname}${u.search}`, method: 'POST', headers, timeout: REQUEST_TIMEOUT_MS,
      }, (r) => {
        let out = '';
        r.setEncoding('utf8');
        r.on('data', (c) => { out += c; });
        r.on('end', () => resolve({ r, text: out }));
        r.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error(`timeout: POST ${url}`)));
      req.on('error', reject);
      req.end(text);
    });
  } catch (err) {
    finishRequest(entry, { error: err });
    throw err;
  }
  const { r } = res;
  const fields = r.headersDistinct['www-authenticate'] ?? [];
  const wwwAuthenticate = fields.length ? fields.join(', ') : null;
  finishRequest(entry, { status: r.statusCode, wwwAuthenticate });
  const out = {
    audit: entry,
    status: r.statusCode,
    headers: r.headers,
    wwwAuthenticate,
    wwwAuthenticateFields: fields,
    challenges: wwwAuthenticate === null ? undefined : authChallenges(wwwAuthenticate),
    dpopNonce: r.headers['dpop-nonce'],
    text: res.text,
    messages: [],
    response: undefined,
  };
  const type = String(r.headers['content-type'] ?? '').toLowerCase();
  const payloads = type.startsWith('text/event-stream') ? parseSse(`${res.text}\n\n`)[0] : [res.text];
  for (const p of payloads) {
    if (!p.trim()) continue;
    try {
      const parsed = JSON.parse(p);
      out.messages.push(...(Array.isArray(parsed) ? parsed : [parsed]));
    } catch {
      // not JSON
    }
  }
  let id;
  try {
    id = JSON.parse(text)?.id;
  } catch {
    id = undefined;
  }
  out.response = out.messages.find((m) => id !== undefined && m.id === id && !m.method);
  return out;
}
