// Helpers for the interop tests (*.test.mjs): child processes, tokens from the
// oidc-provider AS (as.mjs), a minimal MCP streamable-HTTP client, token tampering.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createPublicKey } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

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

export async function stopChild(child, graceMs = 3000) {
  if (child.exitCode !== null || child.signalCode !== null) {
    children.delete(child);
    return;
  }
  child.stoppedOnPurpose = true;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  let timer;
  const timedOut = new Promise((resolve) => {
    timer = setTimeout(() => resolve('timeout'), graceMs);
  });
  if ((await Promise.race([exited, timedOut])) === 'timeout') {
    child.kill('SIGKILL');
    await Promise.race([exited, new Promise((r) => setTimeout(r, graceMs))]);
  }
  clearTimeout(timer);
  children.delete(child);
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

export async function startAuthorizationServer(alg) {
  const { child, match, log } = await spawnUntil(
    `as(${alg})`,
    process.execPath,
    [path.join(HERE, 'as.mjs'), '0'],
    {
      ready: /^issuer (http:\/\/127\.0\.0\.1:\d+)$/,
      env: { AS_ACCESS_TOKEN_ALG: alg, AS_EXIT_ON_STDIN_EOF: '1' },
      stdin: 'pipe',
    },
  );
  return { child, log, issuer: match[1] };
}

/**
 * Starts examples/notes_server on a free port, trusting `issuer` (keys from its /jwks).
 *
 * Options (all optional, for the policy tests):
 *   args     extra command-line arguments, e.g. ['--sessions']
 *   config   (resource, issuer) => TOML text: written to a temporary file and passed as
 *            `--config FILE` instead of `--issuer`/`--jwks-uri` (the file must then name
 *            the issuer itself); the file is removed when this process exits.
 */
export async function startNotesServer(issuer, { args: extraArgs = [], config } = {}) {
  const bin = notesServerBin();
  let lastErr;
  // The free port is picked, released and then handed to the server: retry if
  // someone else grabbed it in between.
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const port = await freePort();
    const resource = `http://127.0.0.1:${port}/mcp`;
    try {
      const trust = config === undefined
        ? ['--issuer', issuer, '--jwks-uri', `${issuer}/jwks`]
        : ['--config', writeTempConfig(config(resource, issuer))];
      const { child, match, log } = await spawnUntil('notes_server', bin, [
        '--listen', `127.0.0.1:${port}`,
        '--resource', resource,
        ...trust,
        ...extraArgs,
      ], { ready: /listening on http:\/\/(\[[0-9A-Fa-f:]+\]:\d+|[0-9A-Za-z.-]+:\d+)/ });
      const addr = match[1];
      assert.equal(addr.replace(/\/+$/, ''), `127.0.0.1:${port}`, `notes_server listens on ${addr}, expected port ${port}`);
      return {
        child, log, port, resource, origin: `http://127.0.0.1:${port}`,
      };
    } catch (err) {
      lastErr = err;
      // Only a lost race for the port is worth another try.
      if (!/in use|EADDRINUSE|AddrInUse|os error 98/i.test(err.message)) throw err;
    }
  }
  throw lastErr;
}

const tempDirs = [];
process.once('exit', () => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

function writeTempConfig(text) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'tower-mcp-auth-interop-'));
  tempDirs.push(dir);
  const file = path.join(dir, 'notes_server.toml');
  writeFileSync(file, text);
  return file;
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
  const res = await fetch(`${issuer}/token`, {
    method: 'POST', headers, body, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const json = await res.json();
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
    const res = await fetch(url, {
      method: 'POST', headers, body: JSON.stringify(message), signal: controller.signal,
    });
    const out = {
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
  return `${parts[0]}.${b64u.fromJson(change({ ...payload }, header))}.${parts[2]}`;
}

export function withFlippedSignatureBit(token) {
  const { parts } = decodeJwt(token);
  const sig = b64u.dec(parts[2]);
  sig[Math.floor(sig.length / 2)] ^= 0x01;
  return `${parts[0]}.${parts[1]}.${b64u.enc(sig)}`;
}

export function withAlgNone(token) {
  const { header, parts } = decodeJwt(token);
  return `${b64u.fromJson({ ...header, alg: 'none' })}.${parts[1]}.`;
}

/** Same header (kid included) and claims, signed by a key the AS never published. */
export async function withForeignKey(token) {
  const { header, payload } = decodeJwt(token);
  const { privateKey } = await generateKeyPair(header.alg);
  return new SignJWT(payload).setProtectedHeader(header).sign(privateKey);
}

/** Classic alg confusion: HS256 keyed with the AS's published public key (as PEM). */
export async function withHs256FromPublicKey(token, issuer) {
  const { header, payload } = decodeJwt(token);
  const jwks = await (await fetch(`${issuer}/jwks`, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })).json();
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  assert.ok(jwk, `kid ${header.kid} is in the JWKS`);
  const pem = createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
  return new SignJWT(payload).setProtectedHeader({ ...header, alg: 'HS256' }).sign(new TextEncoder().encode(pem));
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
    const res = await fetch(url, {
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
      status: res.status, headers: res.headers, wwwAuthenticate: res.headers.get('www-authenticate'), text, json,
    };
  } finally {
    clearTimeout(timer);
  }
}
