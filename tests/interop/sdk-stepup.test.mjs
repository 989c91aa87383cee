// End to end with the official TypeScript MCP SDK (@modelcontextprotocol/sdk, pinned in
// package.json) as the client: examples/notes_server behind tower-mcp-auth, tokens from
// oidc-provider (as.mjs) by client credentials.
//
// The client starts from nothing but the server URL:
//   POST initialize → 401 + resource_metadata → protected resource metadata (RFC 9728)
//   → authorization server metadata (RFC 8414) → client-credentials token for the resource
//   (RFC 8707 `resource`) with scope notes:read → initialize, tools/list (add_note hidden),
//   tools/call list_notes;
// then tools/call add_note → 403 insufficient_scope scope="notes:write" → step-up:
//   - the stock ClientCredentialsProvider: the SDK's 403 handler re-runs auth() but the
//     provider keeps requesting its configured scope, so the SDK gives up; the test steps
//     up explicitly (scope from the challenge ∪ granted, new token, reconnect, retry);
//   - a provider that requests what the challenge names: the SDK's own 403 retry succeeds.
// README.md says which path the pinned SDK takes; the first test handles both.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport, StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

import {
  CLIENT_ID, CLIENT_SECRET,
  bearerChallenge, decodeJwt, resultText,
  startAuthorizationServer, startNotesServer, stopChild, trackedFetch,
} from './lib.mjs';
import { auditLogTest } from './audit.mjs';

const SUITE_TIMEOUT_MS = 180_000;
const CALL_TIMEOUT_MS = 20_000;
const ALG = 'ES256';

/**
 * Wraps fetch: records every request the SDK makes (URL, method, status, challenge, form).
 * Goes through lib.mjs's trackedFetch, so requests to notes_server are in its ledger (for
 * the audit-log check) and every credential is recorded.
 */
function tracingFetch() {
  const log = [];
  const hooks = [];
  const traced = async (input, init = {}) => {
    const url = typeof input === 'string' ? input : (input.href ?? input.url);
    const method = (init.method ?? 'GET').toUpperCase();
    let form;
    if (init.body instanceof URLSearchParams) form = new URLSearchParams(init.body);
    else if (typeof init.body === 'string' && /x-www-form-urlencoded/i.test(new Headers(init.headers).get('content-type') ?? '')) {
      form = new URLSearchParams(init.body);
    }
    let rpcMethod;
    if (typeof init.body === 'string' && !form) {
      try {
        const parsed = JSON.parse(init.body);
        rpcMethod = Array.isArray(parsed) ? parsed.map((m) => m.method).join(',') : (parsed.method ?? 'response');
        if (parsed.method === 'tools/call') rpcMethod += ` ${parsed.params?.name}`;
      } catch {
        // not JSON
      }
    }
    const headers = new Headers(init.headers);
    const res = await trackedFetch(input, { ...init, signal: init.signal ?? AbortSignal.timeout(CALL_TIMEOUT_MS) });
    const entry = {
      method,
      url: String(url),
      status: res.status,
      wwwAuthenticate: res.headers.get('www-authenticate'),
      authorization: headers.get('authorization'),
      form,
      rpcMethod,
    };
    log.push(entry);
    for (const hook of hooks) hook(entry);
    return res;
  };
  return { fetch: traced, log, onResponse: (hook) => hooks.push(hook) };
}

const bearerOf = (entry) => entry.authorization?.replace(/^Bearer /, '');
const scopeClaim = (token) => decodeJwt(token).payload.scope;
const scopeSet = (s) => [...new Set(String(s ?? '').split(' ').filter(Boolean))].sort();

async function connect(url, provider, traced) {
  const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider: provider, fetch: traced.fetch });
  const client = new Client({ name: 'tower-mcp-auth-interop-sdk', version: '0.0.0' }, { capabilities: {} });
  await client.connect(transport, { timeout: CALL_TIMEOUT_MS });
  return client;
}

const callTool = (client, name, args = {}) => client.callTool({ name, arguments: args }, undefined, { timeout: CALL_TIMEOUT_MS });

describe(`TypeScript MCP SDK client against notes_server (${ALG})`, { timeout: SUITE_TIMEOUT_MS }, () => {
  let as;
  let rs;
  let url;
  let metadataUrl;
  const clients = [];

  before(async () => {
    as = await startAuthorizationServer(ALG);
    rs = await startNotesServer(as.issuer);
    url = rs.resource;
    metadataUrl = `${rs.origin}/.well-known/oauth-protected-resource/mcp`;
  });

  after(async () => {
    await Promise.all(clients.map((c) => c.close().catch(() => {})));
    await Promise.all([rs?.child, as?.child].filter(Boolean).map((c) => stopChild(c)));
    if (process.env.INTEROP_LOGS) {
      for (const l of [as?.log, rs?.log].filter(Boolean)) process.stderr.write(`--- ${l.name} ---\n${l.text}\n`);
    }
  });

  describe('stock ClientCredentialsProvider, initial scope notes:read', () => {
    const traced = tracingFetch();
    let client;
    let forbidden;

    it('discovers everything from the server URL: 401 → PRM → AS metadata → token → initialize', async () => {
      const provider = new ClientCredentialsProvider({
        clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, scope: 'notes:read', expectedIssuer: as.issuer,
      });
      client = await connect(url, provider, traced);
      clients.push(client);
      const { log } = traced;

      // 1. initialize without a token → 401 with resource_metadata
      const first = log[0];
      assert.equal(first.method, 'POST');
      assert.equal(first.url, url);
      assert.equal(first.rpcMethod, 'initialize');
      assert.equal(first.authorization, null);
      assert.equal(first.status, 401);
      const challenge = bearerChallenge(first.wwwAuthenticate);
      assert.equal(challenge.resource_metadata, metadataUrl);
      assert.equal(challenge.error, undefined);

      // 2. the protected resource metadata named by the challenge
      const prm = log.findIndex((e) => e.url === metadataUrl);
      assert.ok(prm > 0, `PRM fetched: ${log.map((e) => `${e.method} ${e.url} ${e.status}`).join('; ')}`);
      assert.equal(log[prm].status, 200);

      // 3. the authorization server metadata of the issuer the PRM names
      const asMeta = log.findIndex((e, i) => i > prm && e.url.startsWith(`${as.issuer}/.well-known/`) && e.status === 200);
      assert.ok(asMeta > prm, 'AS metadata fetched after the PRM');
      assert.match(log[asMeta].url, /\/\.well-known\/(oauth-authorization-server|openid-configuration)$/);

      // 4. a client-credentials token for the resource
      const tokenIdx = log.findIndex((e, i) => i > asMeta && e.url === `${as.issuer}/token`);
      assert.ok(tokenIdx > asMeta, 'token requested after AS metadata');
      const tokenReq = log[tokenIdx];
      assert.equal(tokenReq.status, 200);
      assert.equal(tokenReq.form.get('grant_type'), 'client_credentials');
      assert.equal(tokenReq.form.get('resource'), url);
      assert.equal(tokenReq.form.get('scope'), 'notes:read');

      // 5. initialize again, with the token → success
      const retry = log.findIndex((e, i) => i > tokenIdx && e.rpcMethod === 'initialize');
      assert.ok(retry > tokenIdx, 'initialize retried');
      assert.equal(log[retry].status, 200);
      const token = bearerOf(log[retry]);
      assert.ok(token, 'the retry carries a bearer token');
      assert.equal(decodeJwt(token).payload.aud, url);
      assert.equal(scopeClaim(token), 'notes:read');
      assert.ok(client.getServerVersion()?.name, 'initialized');
    });

    it('tools/list hides add_note and delete_note from a notes:read caller', async () => {
      const { tools } = await client.listTools(undefined, { timeout: CALL_TIMEOUT_MS });
      const names = tools.map((t) => t.name).sort();
      assert.ok(names.includes('whoami') && names.includes('list_notes'), `listed: ${names}`);
      assert.ok(!names.includes('add_note'), `add_note hidden: ${names}`);
      assert.ok(!names.includes('delete_note'), `delete_note hidden: ${names}`);
    });

    it('tools/call list_notes succeeds', async () => {
      const result = await callTool(client, 'list_notes');
      assert.notEqual(result.isError, true, JSON.stringify(result));
      assert.doesNotThrow(() => JSON.parse(resultText(result)));
    });

    it('tools/call add_note → 403 insufficient_scope scope="notes:write", then step-up and retry succeed', async (t) => {
      const { log } = traced;
      const before403 = log.length;
      let result;
      let sdkError;
      try {
        result = await callTool(client, 'add_note', { text: 'written after step-up' });
      } catch (err) {
        sdkError = err;
      }

      // The server's answer to the first attempt.
      const attempts = log.slice(before403).filter((e) => e.rpcMethod === 'tools/call add_note');
      assert.ok(attempts.length >= 1, 'add_note was sent');
      forbidden = attempts[0];
      assert.equal(forbidden.status, 403);
      const challenge = bearerChallenge(forbidden.wwwAuthenticate);
      assert.equal(challenge.error, 'insufficient_scope');
      assert.equal(challenge.scope, 'notes:write');
      assert.equal(challenge.resource_metadata, metadataUrl);
      assert.equal(scopeClaim(bearerOf(forbidden)), 'notes:read');

      // What the SDK did about it: a new token request, then a retry.
      const reauth = log.slice(before403).filter((e) => e.url === `${as.issuer}/token`);
      assert.ok(reauth.length >= 1, 'the SDK re-authorized after the 403 (SEP-835 upscoping)');
      const requested = reauth[0].form.get('scope');
      assert.equal(attempts.length, 2, 'the SDK retried add_note exactly once');

      if (sdkError === undefined) {
        // Automatic step-up: the SDK asked for the challenged scope and the retry succeeded.
        t.diagnostic('SDK path: automatic step-up');
        assert.ok(scopeSet(requested).includes('notes:write'), `requested ${requested}`);
        assert.equal(attempts[1].status, 200);
        assert.notEqual(result.isError, true, JSON.stringify(result));
        return;
      }

      // The pinned SDK (1.32.2): its 403 handler passes the challenge scope to auth(), but
      // fetchToken() builds client-credentials requests from provider.clientMetadata.scope,
      // so the new token has notes:read again, the retry gets the same 403, and the SDK stops.
      t.diagnostic(`SDK path: automatic attempt requested scope=${JSON.stringify(requested)} and failed (${sdkError.message}); explicit step-up`);
      assert.ok(sdkError instanceof StreamableHTTPError, `${sdkError}`);
      assert.equal(sdkError.code, 403);
      assert.match(sdkError.message, /upscoping/);
      assert.equal(requested, 'notes:read', 'the stock provider re-requests its configured scope');
      assert.equal(attempts[1].status, 403);
      assert.equal(attempts[1].wwwAuthenticate, forbidden.wwwAuthenticate);

      // Explicit step-up: the union of what we hold and what the challenge names.
      const granted = scopeSet(scopeClaim(bearerOf(forbidden)));
      const union = scopeSet([...granted, ...scopeSet(challenge.scope)].join(' ')).join(' ');
      assert.equal(union, 'notes:read notes:write');
      const stepped = tracingFetch();
      const provider = new ClientCredentialsProvider({
        clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, scope: union, expectedIssuer: as.issuer,
      });
      await client.close();
      client = await connect(url, provider, stepped);
      clients.push(client);
      const tokenReq = stepped.log.find((e) => e.url === `${as.issuer}/token`);
      assert.equal(tokenReq.form.get('scope'), union);
      assert.equal(tokenReq.form.get('resource'), url);

      result = await callTool(client, 'add_note', { text: 'written after step-up' });
      assert.notEqual(result.isError, true, JSON.stringify(result));
      const call = stepped.log.find((e) => e.rpcMethod === 'tools/call add_note');
      assert.equal(call.status, 200);
      assert.deepEqual(scopeSet(scopeClaim(bearerOf(call))), ['notes:read', 'notes:write']);
      assert.match(resultText(result), /written after step-up/);
    });

    it('after the step-up, tools/list shows add_note but still not delete_note', async () => {
      const { tools } = await client.listTools(undefined, { timeout: CALL_TIMEOUT_MS });
      const names = tools.map((t) => t.name).sort();
      assert.ok(names.includes('add_note'), `listed: ${names}`);
      assert.ok(!names.includes('delete_note'), `delete_note hidden: ${names}`);
    });
  });

  describe("the SDK's own 403 retry, with a provider that requests the challenged scope", () => {
    // ClientCredentialsProvider whose requested scope is the union of its configured scope
    // and every scope a 403 insufficient_scope challenge named (learned by the fetch hook,
    // since client-credentials token requests are built from clientMetadata.scope).
    class StepUpClientCredentialsProvider extends ClientCredentialsProvider {
      constructor(options) {
        super(options);
        this.learned = new Set(scopeSet(options.scope));
      }

      learn(scope) {
        for (const s of scopeSet(scope)) this.learned.add(s);
      }

      get clientMetadata() {
        return { ...super.clientMetadata, scope: [...this.learned].sort().join(' ') };
      }
    }

    it('add_note: 403 → the SDK re-authorizes with notes:read notes:write and retries → success', async () => {
      const traced = tracingFetch();
      const provider = new StepUpClientCredentialsProvider({
        clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, scope: 'notes:read', expectedIssuer: as.issuer,
      });
      traced.onResponse((e) => {
        if (e.status === 403 && e.wwwAuthenticate) {
          const c = bearerChallenge(e.wwwAuthenticate);
          if (c.error === 'insufficient_scope') provider.learn(c.scope);
        }
      });
      const client = await connect(url, provider, traced);
      clients.push(client);
      const initialToken = traced.log.find((e) => e.url === `${as.issuer}/token`);
      assert.equal(initialToken.form.get('scope'), 'notes:read');

      const mark = traced.log.length;
      const result = await callTool(client, 'add_note', { text: 'stepped up by the SDK' });
      assert.notEqual(result.isError, true, JSON.stringify(result));
      assert.match(resultText(result), /stepped up by the SDK/);

      const after403 = traced.log.slice(mark);
      const calls = after403.filter((e) => e.rpcMethod === 'tools/call add_note');
      assert.deepEqual(calls.map((e) => e.status), [403, 200], 'one 403, one successful retry');
      assert.equal(bearerChallenge(calls[0].wwwAuthenticate).scope, 'notes:write');
      const tokenReqs = after403.filter((e) => e.url === `${as.issuer}/token`);
      assert.equal(tokenReqs.length, 1, 'one re-authorization');
      assert.equal(tokenReqs[0].form.get('scope'), 'notes:read notes:write');
      assert.equal(tokenReqs[0].form.get('resource'), url);
      assert.deepEqual(scopeSet(scopeClaim(bearerOf(calls[1]))), ['notes:read', 'notes:write']);

      // delete_note needs notes:admin: the same dance once more.
      const del = await callTool(client, 'delete_note', { id: 999_999 });
      assert.equal(del.isError, true, 'the handler ran (no such note)');
      assert.match(resultText(del), /no note with id 999999/);
      const delCalls = traced.log.filter((e) => e.rpcMethod === 'tools/call delete_note');
      assert.deepEqual(delCalls.map((e) => e.status), [403, 200]);
      assert.equal(bearerChallenge(delCalls[0].wwwAuthenticate).scope, 'notes:admin');
      assert.deepEqual(scopeSet(scopeClaim(bearerOf(delCalls[1]))), ['notes:admin', 'notes:read', 'notes:write']);
    });
  });

  // Last: closes the SDK clients, stops the server and checks its audit log against every
  // request the SDK sent to it.
  auditLogTest(() => rs, {
    beforeStop: () => Promise.all(clients.map((c) => c.close().catch(() => {}))),
    minimum: {
      allowedWithPrincipal: 8, missing_credentials: 3, stepUpTool: 4,
    },
  });
});
