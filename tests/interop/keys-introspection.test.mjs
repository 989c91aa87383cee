// Key discovery, key rotation and opaque-token introspection against oidc-provider (as.mjs
// with AS_ADMIN=1: spare signing keys and an admin endpoint that rotates to one at run time).
//
// Two notes_servers:
//   - `discovering`: `--issuer ISSUER` alone, so the JWKS URL comes from the issuer's metadata
//     (RFC 8414 / OpenID discovery);
//   - `introspecting`: `--issuer ISSUER --jwks-uri …` plus `--introspection-endpoint
//     ISSUER/token/introspection --client-id interop-rs --client-secret …`: opaque tokens go
//     to RFC 7662 introspection, JWTs still to the JWT verifier.
//
// Asserted:
//   (a) a token is accepted by the discovering server (the key set found by discovery);
//   (c) an opaque token (client `interop-opaque-client`, accessTokenFormat 'opaque') is
//       accepted through introspection, with the principal of the introspection response
//       (client_id, iss, scopes; no `sub` for client credentials); its scopes drive the policy
//       layer (list_notes allowed, add_note 403 insufficient_scope); an opaque token without
//       `aud` (no resource requested), for another resource, or unknown is 401; a JWT is still
//       accepted by the same server; a token revoked at the AS (RFC 7009) and never used
//       before is refused at once, while a token whose verdict is already cached stays
//       accepted after revocation: cached verdicts live up to the introspection cache TTL
//       (60 s by default, 4 s here with --introspection-cache-ttl), which is the documented
//       trade-off; once the TTL has passed, the same token is refused (401, revoked);
//   (b) rotation without restarting anything: the AS publishes a new key and signs with it;
//       within the 30 s refresh cooldown that followed the server's first key fetch a
//       new-key token is refused (`unknown_key`, no fetch allowed yet); once the cooldown has
//       passed (the test waits until 32 s after the first fetch, ~25 s of it idle), the first
//       request with a new-key token makes the server fetch again and is accepted, and an
//       old-key token minted before the rotation is still accepted (both keys published);
//   (d) both servers' audit logs pass audit.mjs (opaque tokens: principal and token facts
//       from their introspection response, given with expectAudit(res, { claims })).
//
// Takes about 40 s, most of it the cooldown wait.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import {
  OTHER_RESOURCE, PROTOCOL_VERSION, REQUEST_TIMEOUT_MS,
  decodeJwt, expectAudit, getToken, mcpPost, recordAuthorization, recordSecret, resultText, rpc,
  startAuthorizationServer, startNotesServer, stopChild, trackedFetch,
} from './lib.mjs';
import { auditLogTest } from './audit.mjs';
import {
  OPAQUE_CLIENT_ID, OPAQUE_CLIENT_SECRET, RS_CLIENT_ID, RS_CLIENT_SECRET,
} from './as.mjs';

const SUITE_TIMEOUT_MS = 180_000;
const ALG = 'ES256';
/** notes_server's RemoteJwks refresh cooldown (RemoteJwksOptions::default().cooldown). */
const COOLDOWN_MS = 30_000;
/** Wait this long past the cooldown before the first use of the new key. */
const COOLDOWN_MARGIN_MS = 2_000;
/** The introspecting server's verdict cache TTL (--introspection-cache-ttl), in seconds. */
const INTROSPECTION_TTL_S = 4;

const WHOAMI_OPS = [{ method: 'tools/call', target: 'whoami' }];
const call = (name, args = {}) => rpc('tools/call', { name, arguments: args });
const basic = (id, secret) => `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`;
const describeRes = (res) => `${res.status} ${res.wwwAuthenticate ?? ''} ${String(res.text).slice(0, 300)}`;

describe(`key discovery, rotation and introspection against oidc-provider (${ALG})`, { timeout: SUITE_TIMEOUT_MS }, () => {
  let as;
  let discovering;
  let introspecting;
  /** Just before the discovering server's first request, so before its first key fetch. */
  let firstFetchNotBefore;

  before(async () => {
    recordSecret(RS_CLIENT_SECRET);
    recordSecret(OPAQUE_CLIENT_SECRET);
    as = await startAuthorizationServer(ALG, { admin: true });
    discovering = await startNotesServer(as.issuer, { jwksUri: false });
    introspecting = await startNotesServer(as.issuer, {
      args: [
        '--introspection-endpoint', `${as.issuer}/token/introspection`,
        '--client-id', RS_CLIENT_ID,
        '--client-secret', RS_CLIENT_SECRET,
        '--introspection-cache-ttl', String(INTROSPECTION_TTL_S),
      ],
    });
  });

  after(async () => {
    await Promise.all([discovering?.child, introspecting?.child, as?.child].filter(Boolean).map((c) => stopChild(c)));
    if (process.env.INTEROP_LOGS) {
      for (const l of [as?.log, discovering?.log, introspecting?.log].filter(Boolean)) {
        process.stderr.write(`--- ${l.name} ---\n${l.text}\n`);
      }
    }
  });

  const whoami = (server, token) => mcpPost(server.resource, call('whoami'), { token, protocolVersion: PROTOCOL_VERSION });

  /** 200 and a whoami naming `clientId`, `issuer` and `scopes`; returns the parsed identity. */
  const assertWhoami = (res, { clientId, issuer, scopes }, what) => {
    assert.equal(res.status, 200, `${what}: ${describeRes(res)}`);
    assert.ok(res.response && !res.response.error, `${what}: ${res.text}`);
    assert.notEqual(res.response.result.isError, true, `${what}: ${res.text}`);
    const me = JSON.parse(resultText(res.response.result));
    assert.equal(me.client_id, clientId, `${what}: client_id`);
    assert.equal(me.issuer, issuer, `${what}: issuer`);
    assert.deepEqual([...me.scopes].sort(), [...scopes].sort(), `${what}: scopes`);
    return me;
  };

  const assertRefused = (res, reason, what) => {
    expectAudit(res, { decision: 'deny', reason });
    assert.equal(res.status, 401, `${what}: ${describeRes(res)}`);
    assert.ok((res.wwwAuthenticate ?? '').includes('error="invalid_token"'), `${what}: ${describeRes(res)}`);
  };

  const opaqueToken = async (resource, scope = 'notes:read') => {
    const { access_token: token } = await getToken(as.issuer, {
      resource, scope, clientId: OPAQUE_CLIENT_ID, clientSecret: OPAQUE_CLIENT_SECRET,
    });
    assert.ok(!token.includes('.'), `an opaque token, not a JWT: ${token.slice(0, 20)}…`);
    return token;
  };

  /** The AS's own introspection of `token` (as the resource server's client). */
  const introspect = async (token) => {
    const authorization = basic(RS_CLIENT_ID, RS_CLIENT_SECRET);
    recordAuthorization(authorization);
    const res = await trackedFetch(`${as.issuer}/token/introspection`, {
      method: 'POST',
      headers: { authorization, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    assert.equal(res.status, 200);
    return res.json();
  };

  /** RFC 7009 revocation by the token's own client. */
  const revoke = async (token) => {
    const authorization = basic(OPAQUE_CLIENT_ID, OPAQUE_CLIENT_SECRET);
    recordAuthorization(authorization);
    const res = await trackedFetch(`${as.issuer}/token/revocation`, {
      method: 'POST',
      headers: { authorization, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token, token_type_hint: 'access_token' }),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    assert.equal(res.status, 200, `revocation: ${res.status} ${await res.text()}`);
    assert.equal((await introspect(token)).active, false, 'revoked at the AS');
  };

  /**
   * What the audit event of an accepted opaque token says: the introspection response's
   * members. notes_server sets the principal's subject to "" when the response has no `sub`
   * (client credentials), and `jti` is absent (oidc-provider omits it for opaque tokens).
   */
  const opaqueClaims = (introspection) => ({ ...introspection, sub: introspection.sub ?? '' });

  // -------------------------------------------------------------------------
  // (a) discovery

  it('(a) --issuer alone: the key set is found by discovery and tokens are accepted', async () => {
    const { access_token: token } = await getToken(as.issuer, { resource: discovering.resource, scope: 'notes:read' });
    firstFetchNotBefore = Date.now();
    const res = await whoami(discovering, token);
    expectAudit(res, { decision: 'allow', principal: true, mcp: WHOAMI_OPS });
    assertWhoami(res, { clientId: 'interop-client', issuer: as.issuer, scopes: ['notes:read'] }, 'discovered keys');
    // The metadata names the issuer as the authorization server.
    const meta = await trackedFetch(`${discovering.origin}/.well-known/oauth-protected-resource/mcp`, {
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    assert.equal(meta.status, 200);
    assert.deepEqual((await meta.json()).authorization_servers, [as.issuer]);
  });

  // -------------------------------------------------------------------------
  // (c) opaque tokens

  it('(c) an opaque token is accepted through introspection, its scopes drive the policy', async () => {
    const token = await opaqueToken(introspecting.resource);
    const introspection = await introspect(token);
    assert.equal(introspection.active, true);
    assert.equal(introspection.aud, introspecting.resource, 'aud = the resource');
    assert.equal(introspection.client_id, OPAQUE_CLIENT_ID);
    const claims = opaqueClaims(introspection);

    const res = await whoami(introspecting, token);
    expectAudit(res, { decision: 'allow', principal: true, claims, mcp: WHOAMI_OPS });
    const me = assertWhoami(res, { clientId: OPAQUE_CLIENT_ID, issuer: as.issuer, scopes: ['notes:read'] }, 'opaque token');
    assert.equal(me.subject, '', 'client credentials: no sub in the introspection response');

    // Second use: answered from the verdict cache (same answer).
    const again = await whoami(introspecting, token);
    expectAudit(again, { decision: 'allow', principal: true, claims });
    assertWhoami(again, { clientId: OPAQUE_CLIENT_ID, issuer: as.issuer, scopes: ['notes:read'] }, 'opaque token again');

    const list = await mcpPost(introspecting.resource, call('list_notes'), { token, protocolVersion: PROTOCOL_VERSION });
    expectAudit(list, { decision: 'allow', principal: true, claims });
    assert.equal(list.status, 200, `list_notes with notes:read: ${describeRes(list)}`);
    const add = await mcpPost(introspecting.resource, call('add_note', { text: 'x' }), { token, protocolVersion: PROTOCOL_VERSION });
    expectAudit(add, {
      decision: 'deny', reason: 'insufficient_scope', requiredScopes: 'notes:write', claims,
    });
    assert.equal(add.status, 403, `add_note with notes:read only: ${describeRes(add)}`);
  });

  it('(c) JWTs still go to the JWT verifier on the introspecting server', async () => {
    const { access_token: token } = await getToken(as.issuer, { resource: introspecting.resource, scope: 'notes:read notes:write' });
    const res = await whoami(introspecting, token);
    expectAudit(res, { decision: 'allow', principal: true });
    const me = assertWhoami(res, { clientId: 'interop-client', issuer: as.issuer, scopes: ['notes:read', 'notes:write'] }, 'JWT');
    assert.equal(me.subject, decodeJwt(token).payload.sub);
  });

  it('(c) opaque tokens without aud, for another resource, or unknown are 401', async () => {
    // No resource requested: the AS issues a token without `aud`.
    const { access_token: noAud } = await getToken(as.issuer, {
      scope: 'notes:read', clientId: OPAQUE_CLIENT_ID, clientSecret: OPAQUE_CLIENT_SECRET,
    });
    assert.equal((await introspect(noAud)).aud, undefined);
    assertRefused(await whoami(introspecting, noAud), 'missing_claim', 'opaque token without aud');

    const other = await opaqueToken(OTHER_RESOURCE);
    assertRefused(await whoami(introspecting, other), 'wrong_audience', 'opaque token for another resource');

    const unknown = recordSecret(`unknownOpaqueToken${Date.now()}x9Qz`);
    assertRefused(await whoami(introspecting, unknown), 'revoked', 'a token the AS does not know (active: false)');
  });

  it('(c) revocation at the AS: a never-used revoked token is refused at once; a cached verdict lasts up to the TTL', async () => {
    const cached = await opaqueToken(introspecting.resource);
    const cachedClaims = opaqueClaims(await introspect(cached));
    const firstSent = Date.now();
    const first = await whoami(introspecting, cached);
    const firstDone = Date.now();
    expectAudit(first, { decision: 'allow', principal: true, claims: cachedClaims });
    assert.equal(first.status, 200, describeRes(first));

    const fresh = await opaqueToken(introspecting.resource);
    await revoke(fresh);
    assertRefused(await whoami(introspecting, fresh), 'revoked', 'revoked before its first use');

    // Documented: verdicts are cached (60 s by default, never past exp), so a token revoked at
    // the AS after it was verified is still accepted until its cached verdict expires.
    await revoke(cached);
    const ttlMs = INTROSPECTION_TTL_S * 1000;
    const afterRevocation = await whoami(introspecting, cached);
    // The verdict was cached during the first request, so it lives until at least
    // firstSent + TTL; a machine slow enough to get here later cannot tell.
    if (Date.now() < firstSent + ttlMs - 500) {
      expectAudit(afterRevocation, { decision: 'allow', principal: true, claims: cachedClaims });
      assert.equal(afterRevocation.status, 200, `cached verdict within the TTL: ${describeRes(afterRevocation)}`);
    }

    // Once the TTL has passed (cached no later than firstDone), the endpoint is asked again
    // and the revoked token is refused.
    const wait = firstDone + ttlMs + 1_000 - Date.now();
    if (wait > 0) await new Promise((resolve) => { setTimeout(resolve, wait); });
    assertRefused(await whoami(introspecting, cached), 'revoked', 'revoked at the AS, after the cache TTL');
  });

  // -------------------------------------------------------------------------
  // (b) rotation

  it('(b) key rotation at the AS: the new key is accepted on first use after the refresh cooldown', async () => {
    assert.ok(firstFetchNotBefore, 'test (a) ran first and loaded the keys');
    const { access_token: oldToken } = await getToken(as.issuer, { resource: discovering.resource, scope: 'notes:read' });
    const oldKid = decodeJwt(oldToken).header.kid;

    const rotation = await fetch(`${as.adminUrl}/rotate`, { method: 'POST', signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
    assert.equal(rotation.status, 200);
    const { kid: newKid } = await rotation.json();
    const published = await (await fetch(`${as.issuer}/jwks`, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) })).json();
    assert.deepEqual(published.keys.map((k) => k.kid).filter((k) => k === oldKid || k === newKid).sort(), [newKid, oldKid].sort(), 'both keys published');

    const { access_token: probe } = await getToken(as.issuer, { resource: discovering.resource, scope: 'notes:read' });
    const { access_token: newToken } = await getToken(as.issuer, { resource: discovering.resource, scope: 'notes:read' });
    assert.equal(decodeJwt(newToken).header.kid, newKid, 'new tokens are signed with the new key');

    // Within the cooldown after the first fetch the unknown kid may not trigger a fetch.
    if (Date.now() - firstFetchNotBefore < COOLDOWN_MS - 5_000) {
      assertRefused(await whoami(discovering, probe), 'unknown_key', 'new key within the refresh cooldown');
    }

    const wait = firstFetchNotBefore + COOLDOWN_MS + COOLDOWN_MARGIN_MS - Date.now();
    if (wait > 0) await new Promise((resolve) => { setTimeout(resolve, wait); });

    const res = await whoami(discovering, newToken);
    expectAudit(res, { decision: 'allow', principal: true, mcp: WHOAMI_OPS });
    assertWhoami(res, { clientId: 'interop-client', issuer: as.issuer, scopes: ['notes:read'] }, 'first use of the new key');
    // The old key is still published: an old-key token never used before still verifies.
    const old = await whoami(discovering, oldToken);
    expectAudit(old, { decision: 'allow', principal: true });
    assertWhoami(old, { clientId: 'interop-client', issuer: as.issuer, scopes: ['notes:read'] }, 'old key after the rotation');
  });

  // -------------------------------------------------------------------------
  // (d) audit logs

  auditLogTest(() => discovering, {
    minimum: { allowedWithPrincipal: 3 },
  });
  auditLogTest(() => introspecting, {
    minimum: {
      allowedWithPrincipal: 6, stepUpTool: 1, missing_claim: 1, wrong_audience: 1, revoked: 2,
    },
  });
});
