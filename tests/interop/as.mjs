// Minimal OAuth 2.1 authorization server for the tower-mcp-auth interop tests,
// built on oidc-provider (panva/node-oidc-provider 9.x).
//
// Usage:
//   node as.mjs [PORT]          (or AS_PORT=PORT node as.mjs; PORT 0 = pick a free one)
//
// Prints exactly one line `issuer http://127.0.0.1:PORT` on stdout once it accepts
// connections (oidc-provider itself may print other "NOTICE"/"WARNING" lines around it).
//
// What it serves (all relative to the issuer):
//   /.well-known/openid-configuration   discovery (OIDC)
//   /.well-known/oauth-authorization-server  the same document (RFC 8414 path)
//   /jwks                               public signing keys (ES256 + RS256, fresh per run)
//   /token                              token endpoint (client_credentials)
//
// Two confidential clients: client_id `interop-client`, secret `interop-secret`, and
// client_id `interop-client-2`, secret `interop-secret-2` (a second principal, e.g. for
// session-binding tests); both grant_types [client_credentials],
// token_endpoint_auth_method client_secret_basic (oidc-provider also accepts
// client_secret_post for a client registered with client_secret_basic, and vice versa).
//
// Resource indicators (RFC 8707): any absolute http(s) URI on a loopback host
// (127.0.0.1, localhost, [::1]) is accepted as `resource`. For it the AS issues an
// RFC 9068 JWT access token signed with ES256 (AS_ACCESS_TOKEN_ALG=RS256 switches
// to the RS256 key):
//   header  { alg: 'ES256', typ: 'at+jwt', kid }
//   payload { jti, sub, iat, exp, scope, client_id, iss, aud }
// where aud is the resource URI (a single string), sub == client_id == 'interop-client'
// for client credentials, exp - iat == 600 (599 when a second ends between oidc-provider's two
// clock reads), and scope is the *requested* scope
// intersected with 'notes:read notes:write notes:admin' (no `scope` parameter, or
// none of those, means no `scope` claim at all). Without a `resource` parameter the
// AS issues an opaque (non-JWT) token, unless AS_DEFAULT_RESOURCE is set.
//
// DPoP (RFC 9449): a token request that carries a `DPoP` proof header (typ dpop+jwt,
// htm POST, htu ISSUER/token, signed with one of DPOP_SIGNING_ALGS) gets a DPoP-bound
// token: `token_type: "DPoP"` in the response and `cnf: { jkt }` (the RFC 7638 SHA-256
// thumbprint of the proof's `jwk`) in the JWT; everything else as above. Requests without
// a `DPoP` header get Bearer tokens exactly as before. Replayed proofs (same jti) are
// refused. AS_DPOP_NONCES=1 makes the token endpoint demand a server nonce in every proof
// (400 `use_dpop_nonce` with a `DPoP-Nonce` header first); off by default.
//
// Opaque tokens, introspection and revocation (keys-introspection.test.mjs): the client
// `interop-opaque-client` / `interop-opaque-secret` gets *opaque* access tokens
// (accessTokenFormat 'opaque') for the same loopback resources, with `aud` = the resource
// (as the introspection response shows). `interop-rs` / `interop-rs-secret` is the resource
// server's own client: no grants, only client_secret_basic authentication at
// /token/introspection (RFC 7662, any client may introspect any token). /token/revocation
// (RFC 7009) revokes a client's own opaque tokens (JWT access tokens cannot be revoked).
//
// Key rotation at run time (AS_ADMIN=1): two spare ES256 keys are made at startup but not
// published. A small admin server on another loopback port (AS_ADMIN_PORT, default 0 = any
// free one; its line `admin http://127.0.0.1:PORT` is printed before the `issuer` line)
// answers `POST /rotate`: the next spare key is published in /jwks next to the others (old
// tokens keep verifying) and ES256 access tokens are signed with it from then on. Its answer
// is `{ "kid": NEW_KID, "published": [KIDS] }` (409 when no spare key is left);
// `GET /keys` answers `{ "signing": KID, "published": [KIDS] }`.
import * as http from 'node:http';
import * as crypto from 'node:crypto';
import { pathToFileURL } from 'node:url';

import Provider, { errors } from 'oidc-provider';
import { exportJWK, generateKeyPair } from 'jose';

export const CLIENT_ID = 'interop-client';
export const CLIENT_SECRET = 'interop-secret';
export const CLIENT_ID_2 = 'interop-client-2';
export const CLIENT_SECRET_2 = 'interop-secret-2';
/** Gets opaque access tokens (introspection, revocation). */
export const OPAQUE_CLIENT_ID = 'interop-opaque-client';
export const OPAQUE_CLIENT_SECRET = 'interop-opaque-secret';
/** The resource server's client at the introspection endpoint. */
export const RS_CLIENT_ID = 'interop-rs';
export const RS_CLIENT_SECRET = 'interop-rs-secret';
/** Spare ES256 keys for rotation (AS_ADMIN=1). */
export const SPARE_KEYS = 2;
export const RESOURCE_SCOPE = 'notes:read notes:write notes:admin';
export const ACCESS_TOKEN_TTL = 600;
/** The proof algorithms the token endpoint accepts (`dpop_signing_alg_values_supported`). */
export const DPOP_SIGNING_ALGS = ['ES256', 'ES384', 'EdDSA', 'Ed25519', 'PS256', 'RS256'];

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

function isAcceptedResource(resource) {
  const url = URL.parse(resource);
  return (
    url !== null
    && (url.protocol === 'http:' || url.protocol === 'https:')
    && LOOPBACK_HOSTS.has(url.hostname)
    && url.hash === ''
  );
}

async function signingJwk(alg, options) {
  const { privateKey } = await generateKeyPair(alg, { extractable: true, ...options });
  const jwk = await exportJWK(privateKey);
  return {
    ...jwk, alg, use: 'sig', kid: `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`,
  };
}

/**
 * Which keys /jwks publishes and which one signs ES256 access tokens, for rotation at run time
 * (`rotation.rotate()`); `null` without AS_ADMIN=1 (every key published, the first signs).
 */
function keyRotation(jwks, spare) {
  const published = new Set(jwks.keys.map((k) => k.kid));
  const pending = spare.map((k) => k.kid);
  let signing;
  return {
    published,
    get signing() {
      return signing ?? jwks.keys.find((k) => k.alg === 'ES256').kid;
    },
    rotate() {
      const kid = pending.shift();
      if (kid === undefined) return undefined;
      published.add(kid);
      signing = kid;
      return kid;
    },
  };
}

export async function buildConfiguration({ accessTokenAlg = 'ES256', dpopNonces = false, rotation: withRotation = false } = {}) {
  if (!['ES256', 'RS256'].includes(accessTokenAlg)) {
    throw new Error(`unsupported access token alg ${accessTokenAlg} (ES256 or RS256)`);
  }
  const jwks = {
    keys: [
      // The first key of a given alg is the one used for signing.
      await signingJwk('ES256'),
      await signingJwk('RS256', { modulusLength: 2048 }),
    ],
  };
  let rotation = null;
  if (withRotation) {
    const spare = [];
    for (let i = 0; i < SPARE_KEYS; i += 1) spare.push(await signingJwk('ES256'));
    rotation = keyRotation(jwks, spare);
    jwks.keys.push(...spare);
  }

  const resourceServerInfo = (resource, client) => (client?.clientId === OPAQUE_CLIENT_ID
    ? {
      scope: RESOURCE_SCOPE,
      audience: resource,
      accessTokenFormat: 'opaque',
      accessTokenTTL: ACCESS_TOKEN_TTL,
    }
    : {
      scope: RESOURCE_SCOPE,
      audience: resource,
      accessTokenFormat: 'jwt',
      accessTokenTTL: ACCESS_TOKEN_TTL,
      jwt: {
        sign: rotation && accessTokenAlg === 'ES256'
          ? { alg: accessTokenAlg, kid: rotation.signing }
          : { alg: accessTokenAlg },
      },
    });

  const configuration = {
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        client_id: CLIENT_ID_2,
        client_secret: CLIENT_SECRET_2,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        client_id: OPAQUE_CLIENT_ID,
        client_secret: OPAQUE_CLIENT_SECRET,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        client_id: RS_CLIENT_ID,
        client_secret: RS_CLIENT_SECRET,
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    jwks,
    features: {
      // No end-user flows are used; keep the dev login UI off.
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      // DPoP-bound tokens for token requests with a DPoP proof (oidc-provider 9 enables
      // DPoP by default; spelled out here). Nonces only with AS_DPOP_NONCES=1.
      dPoP: {
        enabled: true,
        nonceSecret: dpopNonces ? crypto.randomBytes(32) : undefined,
        requireNonce(_ctx) {
          return dpopNonces;
        },
        allowReplay: false,
      },
      // RFC 7009: a client revokes its own (opaque) tokens.
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource(_ctx, _client, _oneOf) {
          return process.env.AS_DEFAULT_RESOURCE || undefined;
        },
        useGrantedResource(_ctx, _model) {
          return true;
        },
        getResourceServerInfo(_ctx, resourceIndicator, client) {
          if (!isAcceptedResource(resourceIndicator)) {
            throw new errors.InvalidTarget(`resource ${resourceIndicator} is not served by this AS`);
          }
          return resourceServerInfo(resourceIndicator, client);
        },
      },
    },
    enabledJWA: {
      dPoPSigningAlgValues: DPOP_SIGNING_ALGS,
    },
    // Static scopes the AS knows about besides the resource server scopes.
    scopes: ['openid', 'offline_access'],
    ttl: {
      ClientCredentials(_ctx, token, _client) {
        return token.resourceServer?.accessTokenTTL || ACCESS_TOKEN_TTL;
      },
      AccessToken(_ctx, token, _client) {
        return token.resourceServer?.accessTokenTTL || ACCESS_TOKEN_TTL;
      },
    },
    // Stable error output, no HTML pages.
    renderError(ctx, out, _error) {
      ctx.type = 'json';
      ctx.body = out;
    },
  };
  if (rotation) rotations.set(configuration, rotation);
  return configuration;
}

/** configuration → its keyRotation (with `rotation: true`), for startAuthorizationServer. */
const rotations = new WeakMap();

/** The admin server of AS_ADMIN=1: POST /rotate, GET /keys (see the top of this file). */
async function startAdminServer(rotation, port) {
  const admin = http.createServer((req, res) => {
    const reply = (status, body) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'POST' && req.url === '/rotate') {
      const kid = rotation.rotate();
      if (kid === undefined) reply(409, { error: 'no spare key left' });
      else reply(200, { kid, published: [...rotation.published] });
    } else if (req.method === 'GET' && req.url === '/keys') {
      reply(200, { signing: rotation.signing, published: [...rotation.published] });
    } else {
      reply(404, { error: 'not found' });
    }
  });
  await new Promise((resolve, reject) => {
    admin.once('error', reject);
    admin.listen(port, '127.0.0.1', () => {
      admin.off('error', reject);
      resolve();
    });
  });
  return { admin, adminUrl: `http://127.0.0.1:${admin.address().port}` };
}

export async function startAuthorizationServer({
  port = 0, host = '127.0.0.1', accessTokenAlg, dpopNonces, adminPort,
} = {}) {
  // Bind first so that port 0 works: the issuer must contain the real port.
  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const issuer = `http://${host}:${server.address().port}`;
  const withRotation = adminPort !== undefined;
  const configuration = await buildConfiguration({
    accessTokenAlg, dpopNonces, rotation: withRotation,
  });
  const rotation = rotations.get(configuration);
  const provider = new Provider(issuer, configuration);
  let admin;
  let adminUrl;
  if (rotation) {
    // /jwks publishes only the keys rotated in so far (oidc-provider publishes its whole
    // keystore, spare keys included).
    provider.use(async (ctx, next) => {
      await next();
      if (ctx.path === '/jwks' && ctx.status === 200 && Array.isArray(ctx.body?.keys)) {
        ctx.body = { keys: ctx.body.keys.filter((k) => rotation.published.has(k.kid)) };
      }
    });
    ({ admin, adminUrl } = await startAdminServer(rotation, adminPort));
  }
  server.on('request', provider.callback());
  return {
    issuer, provider, server, admin, adminUrl,
  };
}

async function main() {
  const arg = process.argv[2] ?? process.env.AS_PORT ?? '0';
  const port = Number.parseInt(arg, 10);
  if (!Number.isInteger(port) || port < 0 || port > 65535 || String(port) !== arg.trim()) {
    console.error(`as.mjs: invalid port ${JSON.stringify(arg)}`);
    process.exit(2);
  }

  const accessTokenAlg = process.env.AS_ACCESS_TOKEN_ALG || 'ES256';
  const dpopNonces = process.env.AS_DPOP_NONCES === '1';
  let adminPort;
  if (process.env.AS_ADMIN === '1') {
    adminPort = Number.parseInt(process.env.AS_ADMIN_PORT ?? '0', 10);
    if (!Number.isInteger(adminPort) || adminPort < 0 || adminPort > 65535) {
      console.error(`as.mjs: invalid AS_ADMIN_PORT ${JSON.stringify(process.env.AS_ADMIN_PORT)}`);
      process.exit(2);
    }
  }
  const {
    issuer, server, admin, adminUrl,
  } = await startAuthorizationServer({
    port, accessTokenAlg, dpopNonces, adminPort,
  });

  const shutdown = () => {
    admin?.close();
    admin?.closeAllConnections?.();
    server.close(() => process.exit(0));
    server.closeAllConnections?.();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  // Die with the parent: stdin is a pipe from the test runner and closes when it exits.
  if (process.env.AS_EXIT_ON_STDIN_EOF === '1') {
    process.stdin.on('end', shutdown);
    process.stdin.on('error', shutdown);
    process.stdin.resume();
  }

  if (adminUrl) process.stdout.write(`admin ${adminUrl}\n`);
  process.stdout.write(`issuer ${issuer}\n`);
}

if (process.argv[1] && pathToFileURL(process.argv[1]).href === import.meta.url) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
