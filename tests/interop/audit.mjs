// Audit-log checks for the interop suites. Every notes_server the suites start writes its
// audit log (`--audit-log`, a fresh temporary file, see lib.mjs); each suite ends with
// `auditLogTest(...)`, which stops its server (SIGTERM: graceful shutdown flushes the log)
// and compares the log with the ledger of requests the suite sent to that server:
//
//   - every event valid against schema/audit-event-v1.json (JSON Schema 2020-12, checked with
//     Ajv's 2020 class), with `outcome: "completed"`;
//   - exactly one event per request, matched by `request_id` (the `x-request-id` every
//     tracked request carries), `schema: 1`, unique UUID `event_id`s;
//   - `http` = the method, path and status the client saw; `resource`, `remote_addr`, `time`;
//   - `decision: "deny"` iff `reason` is present; 401/403/413/503 are denials, 2xx are not;
//     the reason code where the test knows it (`expectAudit`), else as implied by the
//     response (no credentials → missing_credentials, insufficient_scope challenge, 403
//     without `error` → access_denied);
//   - a step-up (403 insufficient_scope): `required_scopes` = the challenge's `scope`, `mcp`
//     = the operations of the body (so `mcp[0].target` is the tool);
//   - a request with a valid token: `principal` (issuer, subject, client_id, scopes) and
//     `token` (jti, thumbprint = base64url(SHA-256(token)), binding) match the token sent;
//     for `Authorization: DPoP` `binding: "dpop"` and `key_thumbprint` = the token's cnf.jkt;
//     for an opaque token the claims are its introspection response (`expectAudit(res,
//     { claims })`);
//   - a server started with `--dpop allowed|required` answers with a Bearer challenge first
//     and at most one DPoP challenge; the error is read from whichever carries one;
//     without a valid token neither is present; `session` = base64url(SHA-256(Mcp-Session-Id));
//   - no credential at all in the file: no value of lib.mjs's SECRETS (nor a token's
//     signature segment or first 40 characters), no `Bearer `, no raw Mcp-Session-Id; and
//     every Authorization value, token and DPoP proof of the ledger is among SECRETS, so the
//     scan covers everything the suite sent to the server.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import Ajv2020 from 'ajv/dist/2020.js';

import {
  SECRETS, authChallenges, bearerChallenge, decodeJwt, readAuditLog, sha256b64u, stopNotesServer,
} from './lib.mjs';

/** Reasons of the token layer: no principal is established. */
const TOKEN_REASONS = new Set([
  'missing_credentials', 'multiple_credentials', 'malformed_authorization', 'token_in_query',
  'form_encoded_body', 'dpop_not_enabled', 'malformed_token', 'token_too_large',
  'wrong_token_type', 'algorithm_not_allowed', 'unsupported_critical_header', 'unknown_key',
  'invalid_signature', 'untrusted_issuer', 'wrong_audience', 'expired', 'not_yet_valid',
  'issued_in_future', 'lifetime_too_long', 'missing_claim', 'invalid_claim',
  'missing_proof_of_possession', 'revoked', 'keys_unavailable', 'audit_unavailable',
  // DPoP (RFC 9449) and other sender constraints
  'missing_dpop_proof', 'multiple_dpop_proofs', 'invalid_dpop_proof', 'dpop_replay', 'use_dpop_nonce',
  'dpop_key_mismatch', 'dpop_required', 'replay_store_full', 'certificate_mismatch',
]);
/** Reasons of the policy layer that come after the body was classified (`mcp` is filled). */
const DECIDED_REASONS = new Set(['insufficient_scope', 'access_denied']);

const METADATA_PREFIX = '/.well-known/oauth-protected-resource';
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const RFC3339_MICROS_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;

/** The event schema of the crate (schema 1). */
export const AUDIT_SCHEMA_PATH = fileURLToPath(new URL('../../schema/audit-event-v1.json', import.meta.url));

let schemaValidator;

/** The compiled schema (strict Ajv, all errors), compiled once. */
function auditSchemaValidator() {
  if (schemaValidator === undefined) {
    const schema = JSON.parse(readFileSync(AUDIT_SCHEMA_PATH, 'utf8'));
    // Ajv's 2020 class is the one for this draft; another draft needs another class.
    assert.equal(schema.$schema, 'https://json-schema.org/draft/2020-12/schema', `${AUDIT_SCHEMA_PATH}: $schema`);
    const ajv = new Ajv2020({ strict: true, allErrors: true, allowUnionTypes: true });
    const validate = ajv.compile(schema);
    schemaValidator = { ajv, validate };
  }
  return schemaValidator;
}

/** Asserts that every event of `events` (parsed lines of `where`) is valid against the schema. */
export function assertSchemaValid(events, where) {
  const { ajv, validate } = auditSchemaValidator();
  const invalid = [];
  events.forEach((ev, i) => {
    if (!validate(ev)) invalid.push(`${where}:${i + 1}: ${ajv.errorsText(validate.errors)} in ${JSON.stringify(ev).slice(0, 300)}`);
  });
  assert.deepEqual(invalid, [], `${where}: events invalid against ${AUDIT_SCHEMA_PATH}`);
}

/** The strings no audit log may contain, each with what it is. */
export function secretNeedles() {
  const needles = new Map();
  for (const value of SECRETS) {
    needles.set(value, 'a recorded secret');
    const segments = value.split('.');
    // Short segments (garbage tokens like "not.a.jwt") would match innocent text.
    if (segments.length > 1 && segments.at(-1).length >= 16) needles.set(segments.at(-1), 'a token signature segment');
    if (value.length > 40) needles.set(value.slice(0, 40), 'the first 40 characters of a secret');
  }
  return needles;
}

/** Characters of tokens, proofs and base64 credentials (token68 plus `.`). */
const CREDENTIAL_RUN = /[A-Za-z0-9\-._~+/=]+/g;
/** Length of the anchor windows of leakedNeedles. */
const ANCHOR = 12;

/**
 * The needles (of secretNeedles) that occur in `text`, exactly as `text.includes(needle)`
 * for each would find them, but without scanning a large log once per needle (the soak test
 * has tens of thousands of secrets and a log of tens of MB). Each needle is anchored on the
 * first ANCHOR characters of its longest run of credential characters: if the needle occurs
 * in `text`, that window occurs inside a maximal run of credential characters of `text`, so
 * every window of every distinct run of `text` is looked up, and only the needles found
 * that way (and those without such an anchor) are searched for in full.
 */
function leakedNeedles(text, needles) {
  const byWindow = new Map();
  const candidates = new Set();
  for (const needle of needles.keys()) {
    let anchor = '';
    for (const m of needle.matchAll(CREDENTIAL_RUN)) if (m[0].length > anchor.length) anchor = m[0];
    if (anchor.length < ANCHOR) {
      candidates.add(needle);
      continue;
    }
    const key = anchor.slice(0, ANCHOR);
    const list = byWindow.get(key);
    if (list) list.push(needle);
    else byWindow.set(key, [needle]);
  }
  if (byWindow.size > 0) {
    const seen = new Set();
    for (const m of text.matchAll(CREDENTIAL_RUN)) {
      const run = m[0];
      if (run.length < ANCHOR || seen.has(run)) continue;
      seen.add(run);
      for (let i = 0; i + ANCHOR <= run.length; i += 1) {
        const hits = byWindow.get(run.slice(i, i + ANCHOR));
        if (hits) for (const needle of hits) candidates.add(needle);
      }
    }
  }
  return new Set([...candidates].filter((needle) => text.includes(needle)));
}

/** Asserts that `text` contains no recorded secret and no `Bearer `. */
export function assertNoSecrets(text, where) {
  assert.ok(!text.includes('Bearer '), `${where} contains "Bearer "`);
  const needles = secretNeedles();
  const found = leakedNeedles(text, needles);
  const leaks = [];
  for (const [needle, what] of needles) {
    if (found.has(needle)) leaks.push(`${what}: ${needle.slice(0, 24)}…`);
  }
  assert.deepEqual(leaks, [], `${where} leaks credentials`);
}

/** The operations an audit event should list for a JSON-RPC body (undefined if unreadable). */
function operationsOf(body) {
  if (body === undefined) return undefined;
  let parsed;
  try {
    parsed = JSON.parse(body);
  } catch {
    return undefined;
  }
  const messages = Array.isArray(parsed) ? parsed : [parsed];
  return messages.map((m) => {
    const method = typeof m.method === 'string' ? m.method : '';
    const p = m.params ?? {};
    let target = null;
    if (method === 'tools/call' || method === 'prompts/get') target = p.name ?? null;
    else if (['resources/read', 'resources/subscribe', 'resources/unsubscribe'].includes(method)) target = p.uri ?? null;
    else if (method === 'completion/complete') target = p.ref?.name ?? p.ref?.uri ?? null;
    return { method, target };
  });
}

/**
 * The principal and token facts of an event for `token`: from its JWT claims, or from
 * `claims` (an opaque token's introspection response, given with expectAudit(res, { claims })).
 */
function expectedPrincipal(token, binding = 'bearer', claims = undefined) {
  const payload = claims ?? decodeJwt(token).payload;
  return {
    principal: {
      issuer: payload.iss,
      subject: payload.sub,
      client_id: payload.client_id ?? null,
      delegation_chain: [],
      scopes: [...new Set(String(payload.scope ?? '').split(' ').filter(Boolean))].sort(),
    },
    token: {
      jti: payload.jti ?? null,
      thumbprint: sha256b64u(token),
      binding,
      key_thumbprint: binding === 'dpop' ? (payload.cnf?.jkt ?? null) : null,
    },
  };
}

/**
 * The challenge parameters of a DPoP-enabled server's answer: a Bearer challenge first, at
 * most one DPoP challenge (with `algs`), nothing else; the parameters of the one carrying
 * `error` (the DPoP one if both do), else of the Bearer one.
 */
function dpopServerChallenge(value, at) {
  const c = authChallenges(value);
  assert.equal(c.order[0], 'bearer', at(`the Bearer challenge comes first in ${JSON.stringify(value)}`));
  assert.ok(c.order.every((s) => s === 'bearer' || s === 'dpop'), at(`only Bearer and DPoP challenges in ${JSON.stringify(value)}`));
  if (c.dpop) assert.ok(c.dpop.params.algs, at(`the DPoP challenge names algs in ${JSON.stringify(value)}`));
  if (c.dpop?.params.error !== undefined) return c.dpop.params;
  return c.bearer.params;
}

/**
 * The members every event has, whoever sent the request: schema, ids, time, resource, peer,
 * latency, no arguments, `decision: "deny"` iff a reason, 401/403/413/503 denied and 2xx
 * allowed (by `status`, the one the client saw).
 */
function checkEnvelope(server, ev, status, at) {
  assert.equal(ev.schema, 1, at('schema'));
  assert.match(ev.event_id, UUID_V4, at('event_id'));
  assert.match(ev.time, RFC3339_MICROS_UTC, at('time'));
  assert.equal(ev.resource, server.resource, at('resource'));
  assert.match(ev.remote_addr ?? '', /^127\.0\.0\.1:\d+$/, at('remote_addr'));
  assert.ok(Number.isInteger(ev.latency_us) && ev.latency_us >= 0, at('latency_us'));
  assert.equal(ev.outcome, 'completed', at('outcome (every tracked request got its answer)'));
  assert.equal(ev.arguments, null, at('arguments (no redaction hook configured)'));

  // decision and reason
  assert.ok(['allow', 'deny'].includes(ev.decision), at('decision'));
  const hasReason = typeof ev.reason === 'string' && ev.reason !== '';
  assert.equal(ev.decision === 'deny', hasReason, at('decision "deny" iff a reason'));
  if (!hasReason) assert.equal(ev.reason, null, at('reason'));
  if ([401, 403, 413, 503].includes(status)) assert.equal(ev.decision, 'deny', at('a 401/403/413/503 is a denial'));
  if (status >= 200 && status < 300) assert.equal(ev.decision, 'allow', at('a 2xx is allowed'));
}

/** Checks one event against the request it records; returns a short classification. */
function checkEvent(server, req, ev) {
  const what = `${req.method} ${req.path} (${req.id}, status ${req.status})`;
  const at = (s) => `${what}: ${s} in ${JSON.stringify(ev)}`;

  checkEnvelope(server, ev, req.status, at);
  assert.equal(ev.request_id, req.id, at('request_id'));
  assert.deepEqual(ev.http, { method: req.method, path: req.path, status: req.status }, at('http'));
  if (req.expect.decision) assert.equal(ev.decision, req.expect.decision, at('decision'));

  let challenge;
  if (req.wwwAuthenticate !== null) {
    challenge = server.dpop !== undefined && server.dpop !== 'off'
      ? dpopServerChallenge(req.wwwAuthenticate, at)
      : bearerChallenge(req.wwwAuthenticate);
  }
  let reason = req.expect.reason;
  if (reason === undefined) {
    if (req.status === 401 && req.authorization.length === 0) reason = 'missing_credentials';
    else if (req.status === 403 && challenge?.error === 'insufficient_scope') reason = 'insufficient_scope';
    else if (req.status === 403 && challenge && challenge.error === undefined) reason = 'access_denied';
  }
  if (reason !== undefined) assert.equal(ev.reason, reason, at('reason'));

  // step-up: the scopes of the challenge
  if (ev.reason === 'insufficient_scope') {
    assert.ok(challenge?.scope, at('an insufficient_scope event answers a challenge with scope'));
    assert.deepEqual(ev.required_scopes, challenge.scope.split(' '), at(`required_scopes = challenge scope "${challenge.scope}"`));
    if (req.expect.requiredScopes !== undefined) {
      const set = (list) => [...new Set(list)].sort();
      assert.deepEqual(set(ev.required_scopes), set(req.expect.requiredScopes.split(' ')), at('required_scopes'));
    }
  } else {
    assert.deepEqual(ev.required_scopes, [], at('required_scopes'));
  }
  if (ev.reason === 'access_denied') {
    assert.ok(typeof ev.reason_detail === 'string' && ev.reason_detail !== '', at('reason_detail of a policy denial'));
  } else {
    assert.equal(ev.reason_detail, null, at('reason_detail'));
  }

  // the caller: present exactly when a valid bearer token was checked (everything but the
  // protected resource metadata, which is public)
  const presented = req.bearer ?? req.dpopToken;
  const authenticated = presented !== undefined && !req.path.startsWith(METADATA_PREFIX)
    && !TOKEN_REASONS.has(ev.reason) && req.status !== 401;
  if (authenticated) {
    const want = expectedPrincipal(presented, req.bearer !== undefined ? 'bearer' : 'dpop', req.expect.claims);
    assert.deepEqual(
      { ...ev.principal, scopes: [...(ev.principal?.scopes ?? [])].sort() },
      want.principal,
      at('principal'),
    );
    assert.deepEqual(ev.token, want.token, at('token'));
  } else {
    assert.equal(ev.principal, null, at('no principal without a valid token'));
    assert.equal(ev.token, null, at('no token facts without a valid token'));
  }
  if (req.expect.principal) assert.ok(authenticated, at('expected an authenticated request'));

  // the session (hashed), recorded by the policy layer
  if (authenticated && req.sessionIds.length === 1) {
    assert.equal(ev.session, sha256b64u(req.sessionIds[0]), at('session = base64url(SHA-256(Mcp-Session-Id))'));
  } else if (req.sessionIds.length === 0 || !authenticated) {
    assert.equal(ev.session, null, at('session'));
  }

  // the operations
  const ops = operationsOf(req.body);
  const decided = authenticated && req.method === 'POST' && (ev.reason === null || DECIDED_REASONS.has(ev.reason));
  if (decided && ops !== undefined) {
    assert.deepEqual(ev.mcp, ops, at('mcp = the operations of the body'));
  } else if (!decided) {
    assert.deepEqual(ev.mcp, [], at('no operations before the body was read'));
  }
  if (req.expect.mcp !== undefined) assert.deepEqual(ev.mcp, req.expect.mcp, at('mcp'));

  return {
    decision: ev.decision,
    reason: ev.reason,
    stepUpTool: ev.reason === 'insufficient_scope' && ev.mcp[0]?.method === 'tools/call' && ev.mcp[0].target !== null,
    allowedWithPrincipal: ev.decision === 'allow' && authenticated,
  };
}

/**
 * Checks the events of a client registered with registerExternalClient (lib.mjs): requests
 * this process did not send itself, all carrying one `x-request-id`, so that they cannot be
 * matched to requests one by one. Per event: the envelope (as for every event, by the status
 * the event records), a path of this server, the principal and token facts of the client's
 * token (or, without one, a missing_credentials denial with neither), the operations of a
 * decided POST, `insufficient_scope` only with `required_scopes` and for the targets in
 * `refused`; as a group: at least `minEvents` events, every operation of `ops` among them,
 * every `refused` target refused. Returns the classifications (as checkEvent's).
 */
function checkExternalClient(server, client) {
  const { events } = client;
  const resourcePath = new URL(server.resource).pathname;
  const out = [];
  for (const ev of events) {
    const at = (s) => `${client.label}: ${s} in ${JSON.stringify(ev)}`;
    const status = ev.http?.status;
    checkEnvelope(server, ev, status, at);
    assert.equal(ev.request_id, client.requestId, at('request_id'));
    assert.ok(['GET', 'POST', 'DELETE'].includes(ev.http?.method), at('http.method'));
    assert.equal(ev.http.path, resourcePath, at('http.path'));
    assert.ok(Number.isInteger(status) && status >= 200 && status < 600, at('http.status'));

    if (client.token === undefined) {
      assert.equal(ev.reason, 'missing_credentials', at('no token: missing_credentials'));
      assert.equal(status, 401, at('no token: 401'));
      assert.equal(ev.principal, null, at('no principal without a token'));
      assert.equal(ev.token, null, at('no token facts without a token'));
      assert.deepEqual(ev.mcp, [], at('no operations before authentication'));
      out.push({ decision: ev.decision, reason: ev.reason, stepUpTool: false, allowedWithPrincipal: false });
      continue;
    }
    assert.ok(!TOKEN_REASONS.has(ev.reason), at('the client\'s token is valid'));
    assert.notEqual(status, 401, at('the client\'s token is valid'));
    const want = expectedPrincipal(client.token);
    assert.deepEqual({ ...ev.principal, scopes: [...(ev.principal?.scopes ?? [])].sort() }, want.principal, at('principal'));
    assert.deepEqual(ev.token, want.token, at('token'));
    if (ev.http.method === 'POST' && (ev.reason === null || DECIDED_REASONS.has(ev.reason))) {
      assert.ok(Array.isArray(ev.mcp) && ev.mcp.length >= 1, at('a decided POST lists its operations'));
      for (const op of ev.mcp) assert.equal(typeof op.method, 'string', at('mcp[].method'));
    } else {
      assert.deepEqual(ev.mcp, [], at('no operations (GET/DELETE)'));
    }
    if (ev.reason === 'insufficient_scope') {
      const target = ev.mcp[0]?.target;
      assert.ok(Object.hasOwn(client.refused, target), at(`an expected refusal (${Object.keys(client.refused)})`));
      const set = (list) => [...new Set(list)].sort();
      assert.deepEqual(set(ev.required_scopes), set(client.refused[target].split(' ')), at('required_scopes'));
      assert.equal(status, 403, at('insufficient_scope is a 403'));
    } else {
      assert.deepEqual(ev.required_scopes, [], at('required_scopes'));
    }
    if (ev.reason === 'access_denied') {
      assert.ok(typeof ev.reason_detail === 'string' && ev.reason_detail !== '', at('reason_detail of a policy denial'));
    } else {
      assert.equal(ev.reason_detail, null, at('reason_detail'));
    }
    out.push({
      decision: ev.decision,
      reason: ev.reason,
      stepUpTool: ev.reason === 'insufficient_scope' && ev.mcp[0]?.method === 'tools/call' && ev.mcp[0].target !== null,
      allowedWithPrincipal: ev.decision === 'allow',
    });
  }
  assert.ok(events.length >= client.minEvents, `${client.label}: at least ${client.minEvents} events, got ${events.length}`);
  const seen = events.flatMap((ev) => ev.mcp ?? []).map((op) => `${op.method} ${op.target}`);
  for (const [method, target = null] of client.ops) {
    assert.ok(seen.includes(`${method} ${target}`), `${client.label}: an event of ${method} ${target ?? ''} among ${JSON.stringify(seen)}`);
  }
  for (const target of Object.keys(client.refused)) {
    assert.ok(
      events.some((ev) => ev.reason === 'insufficient_scope' && ev.mcp[0]?.target === target),
      `${client.label}: ${target} refused with insufficient_scope`,
    );
  }
  return out;
}

/**
 * Stops `server` and checks its audit log against its request ledger (see the top of this
 * file). `minimum`: counts the log must at least contain, by reason code, or `allow`,
 * `stepUpTool` (403 step-ups of a tools/call), `allowedWithPrincipal` (so that the checks
 * are not vacuous). Returns a summary.
 */
export async function checkAuditLog(server, { minimum = {} } = {}) {
  const exit = await stopNotesServer(server);
  assert.deepEqual(exit, { code: 0, signal: null, forced: false }, 'notes_server shut down gracefully on SIGTERM');
  const { text, events } = readAuditLog(server);
  assertSchemaValid(events, server.auditLog);
  const requests = server.requests;
  // The scan below looks for SECRETS: everything sent to this server must be among them.
  const unscanned = requests
    .flatMap((r) => [...r.authorization, r.bearer, r.dpopToken, ...r.dpopProofs])
    .filter((v) => typeof v === 'string' && v !== '' && !SECRETS.has(v));
  assert.deepEqual(unscanned.map((v) => `${v.slice(0, 12)}…`), [], 'every token, Authorization value and DPoP proof sent is scanned for');
  assertNoSecrets(text, server.auditLog);

  // Session ids are credentials of a kind too: only their hashes may be logged.
  const rawSessionIds = [...new Set(requests.flatMap((r) => r.sessionIds))].filter((id) => text.includes(id));
  assert.deepEqual(rawSessionIds, [], `${server.auditLog} contains raw Mcp-Session-Id values`);
  const failed = requests.filter((r) => r.status === undefined);
  assert.deepEqual(failed.map((r) => `${r.method} ${r.path} ${r.id}: ${r.error?.message}`), [], 'every tracked request got an answer');

  assert.equal(new Set(events.map((e) => e.event_id)).size, events.length, 'event_ids are unique');
  // Events of registered external clients (registerExternalClient) are checked as groups.
  const external = new Map((server.externalClients ?? []).map((c) => [c.requestId, c]));
  for (const c of external.values()) c.events = [];
  const byRequest = new Map();
  const stray = [];
  const requestIds = new Set(requests.map((r) => r.id));
  assert.ok(![...external.keys()].some((id) => requestIds.has(id)), 'no tracked request reuses an external client\'s request id');
  for (const ev of events) {
    if (external.has(ev.request_id)) external.get(ev.request_id).events.push(ev);
    else if (byRequest.has(ev.request_id) || !requestIds.has(ev.request_id)) stray.push(ev);
    else byRequest.set(ev.request_id, ev);
  }
  assert.deepEqual(stray, [], 'every event belongs to exactly one tracked request (or to a registered external client)');
  const missing = requests.filter((r) => !byRequest.has(r.id)).map((r) => `${r.method} ${r.path} ${r.id} → ${r.status}`);
  assert.deepEqual(missing, [], 'every request has an event');
  const externalEvents = [...external.values()].reduce((n, c) => n + c.events.length, 0);
  assert.equal(events.length, requests.length + externalEvents, 'one audit event per HTTP request');

  const counts = { events: events.length, allow: 0, deny: 0, stepUpTool: 0, allowedWithPrincipal: 0 };
  if (external.size) counts.external = externalEvents;
  const reasons = {};
  const classified = [
    ...requests.map((req) => checkEvent(server, req, byRequest.get(req.id))),
    ...[...external.values()].flatMap((c) => checkExternalClient(server, c)),
  ];
  for (const c of classified) {
    counts[c.decision] += 1;
    if (c.reason) reasons[c.reason] = (reasons[c.reason] ?? 0) + 1;
    if (c.stepUpTool) counts.stepUpTool += 1;
    if (c.allowedWithPrincipal) counts.allowedWithPrincipal += 1;
  }
  for (const [key, min] of Object.entries(minimum)) {
    const have = counts[key] ?? reasons[key] ?? 0;
    assert.ok(have >= min, `at least ${min} × ${key} in the audit log, got ${have} (${JSON.stringify({ counts, reasons })})`);
  }
  const proofs = new Set(requests.flatMap((r) => r.dpopProofs)).size;
  return { counts, reasons, secrets: SECRETS.size, proofs };
}

/**
 * Registers the audit-log test of a suite: call it last in the `describe` body (tests run in
 * order, so it sees every request of the suite). `getServer` returns the notes_server;
 * `beforeStop` (optional) runs first, e.g. to close clients that hold connections.
 */
export function auditLogTest(getServer, { beforeStop, ...options } = {}) {
  it('audit log: one event per request, statuses, decisions, principals, no credentials', async (t) => {
    const server = getServer();
    assert.ok(server, 'the suite started a notes_server');
    await beforeStop?.();
    const summary = await checkAuditLog(server, options);
    t.diagnostic(`audit ${JSON.stringify(summary)}`);
  });
}
