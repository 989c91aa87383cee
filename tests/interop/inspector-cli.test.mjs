// End to end with the MCP Inspector's command-line mode (`@modelcontextprotocol/inspector-cli`,
// a pinned devDependency in package.json) as the client: examples/notes_server behind
// tower-mcp-auth, tokens from oidc-provider (as.mjs) by client credentials, passed to the
// Inspector as `--header "Authorization: Bearer TOKEN"`.
//
// Each test runs the package's bin (`mcp-inspector-cli`, build/cli.js) once:
//
//   cli.js --cli URL --transport http --method tools/list|tools/call [--tool-name N]
//          [--tool-arg k=v] --header "Authorization: Bearer T" --header "x-request-id: ID"
//
// cli.js re-spawns `node build/index.js …` (a plain `node` from PATH: PATH starts with the
// directory of the pinned Node 22 here), which connects with the TypeScript SDK's
// StreamableHTTPClientTransport, runs the method and prints the result as JSON on stdout
// (errors on stderr, exit code 1). The process group is killed on timeout.
//
// The Inspector sends the same headers on every request, so one run has one `x-request-id`
// for its several requests (initialize, notifications/initialized, a GET for the SSE stream,
// tools/list, tools/call): the audit-log check takes each run's events as a group
// (registerExternalClient in lib.mjs, see README.md).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';

import {
  HERE, decodeJwt, describeRun, getToken, registerExternalClient, runProcess, sha256b64u,
  startAuthorizationServer, startNotesServer, stopChild,
} from './lib.mjs';
import { auditLogTest } from './audit.mjs';

const ALG = 'ES256';
const SUITE_TIMEOUT_MS = 240_000;
const RUN_TIMEOUT_MS = 60_000;
const PACKAGE = '@modelcontextprotocol/inspector-cli';
const PACKAGE_DIR = path.join(HERE, 'node_modules', ...PACKAGE.split('/'));

let runs = 0;

describe(`MCP Inspector CLI against notes_server (${ALG})`, { timeout: SUITE_TIMEOUT_MS }, () => {
  let as;
  let rs;
  let tokens;
  let cliJs;

  /**
   * One Inspector run in CLI mode. `token` undefined: no Authorization header. `audit`: what
   * its events must show (registerExternalClient). Returns the run with `json` (stdout parsed,
   * undefined if it is not JSON) and `requestId`.
   */
  async function inspector({
    token, method, toolName, toolArgs = {}, audit = {},
  }) {
    runs += 1;
    const requestId = `inspector-${process.pid}-${runs}`;
    const label = `inspector run ${runs} (${method}${toolName ? ` ${toolName}` : ''}${token ? '' : ', no token'})`;
    registerExternalClient(rs, { requestId, token, label, ...audit });
    const args = [cliJs, '--cli', rs.resource, '--transport', 'http', '--method', method];
    if (toolName) args.push('--tool-name', toolName);
    for (const [k, v] of Object.entries(toolArgs)) args.push('--tool-arg', `${k}=${v}`);
    // --header is variadic: keep it last.
    args.push('--header', `x-request-id: ${requestId}`);
    if (token !== undefined) args.push('--header', `Authorization: Bearer ${token}`);
    const run = await runProcess(label, process.execPath, args, {
      timeoutMs: RUN_TIMEOUT_MS,
      // build/index.js imports "../package.json" if that path exists relative to the working
      // directory, else "../../package.json" (both relative to itself): only a working directory
      // whose parent has a package.json works. Its own build/ directory does.
      cwd: path.join(PACKAGE_DIR, 'build'),
      env: { PATH: `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}` },
    });
    let json;
    try {
      json = JSON.parse(run.stdout);
    } catch {
      json = undefined;
    }
    return {
      ...run, json, requestId, ok: run.code === 0 && !run.timedOut, describe: () => describeRun(label, run),
    };
  }

  const toolNames = (run) => {
    assert.ok(run.ok, run.describe());
    assert.ok(Array.isArray(run.json?.tools), `tools/list printed JSON with tools: ${run.describe()}`);
    return run.json.tools.map((t) => t.name).sort();
  };

  before(async () => {
    const pinned = JSON.parse(readFileSync(path.join(HERE, 'package.json'), 'utf8')).devDependencies?.[PACKAGE];
    assert.match(pinned ?? '', /^\d+\.\d+\.\d+$/, `${PACKAGE} is pinned to an exact version in package.json`);
    let pkg;
    try {
      pkg = JSON.parse(readFileSync(path.join(PACKAGE_DIR, 'package.json'), 'utf8'));
    } catch (err) {
      assert.fail(`${PACKAGE} is not installed (cd tests/interop && npm ci): ${err.message}`);
    }
    assert.equal(pkg.version, pinned, `installed ${PACKAGE} ${pkg.version}, package.json pins ${pinned}: run npm ci`);
    cliJs = path.join(PACKAGE_DIR, pkg.bin?.['mcp-inspector-cli'] ?? 'build/cli.js');

    as = await startAuthorizationServer(ALG);
    rs = await startNotesServer(as.issuer);
    tokens = {
      read: (await getToken(as.issuer, { resource: rs.resource, scope: 'notes:read' })).access_token,
      write: (await getToken(as.issuer, { resource: rs.resource, scope: 'notes:read notes:write' })).access_token,
    };
  });

  after(async () => {
    await Promise.all([rs?.child, as?.child].filter(Boolean).map((c) => stopChild(c)));
    if (process.env.INTEROP_LOGS) {
      for (const l of [as?.log, rs?.log].filter(Boolean)) process.stderr.write(`--- ${l.name} ---\n${l.text}\n`);
    }
  });

  it('--method tools/list with a notes:read token lists whoami and list_notes, not add_note/delete_note', async (t) => {
    const run = await inspector({
      token: tokens.read,
      method: 'tools/list',
      audit: { ops: [['initialize'], ['notifications/initialized'], ['tools/list']] },
    });
    const names = toolNames(run);
    t.diagnostic(`${run.ms} ms: ${names.join(', ')}`);
    assert.ok(names.includes('whoami'), `whoami listed: ${names}`);
    assert.ok(names.includes('list_notes'), `list_notes listed: ${names}`);
    assert.ok(!names.includes('add_note'), `add_note hidden: ${names}`);
    assert.ok(!names.includes('delete_note'), `delete_note hidden: ${names}`);
  });

  it("--method tools/call --tool-name whoami returns the token's subject", async (t) => {
    const run = await inspector({
      token: tokens.read,
      method: 'tools/call',
      toolName: 'whoami',
      audit: { ops: [['initialize'], ['tools/call', 'whoami']] },
    });
    assert.ok(run.ok, run.describe());
    assert.equal(run.json?.isError, false, run.describe());
    const text = run.json.content?.find((c) => c.type === 'text')?.text;
    const me = JSON.parse(text);
    const { payload } = decodeJwt(tokens.read);
    t.diagnostic(`${run.ms} ms: subject ${me.subject}`);
    assert.equal(me.subject, payload.sub);
    assert.equal(me.client_id, payload.client_id);
    assert.equal(me.issuer, as.issuer);
    assert.deepEqual(me.scopes, ['notes:read']);
    assert.equal(me.token_thumbprint, sha256b64u(tokens.read));
  });

  it('--method tools/list with a notes:read notes:write token also lists add_note', async () => {
    const run = await inspector({
      token: tokens.write,
      method: 'tools/list',
      audit: { ops: [['initialize'], ['tools/list']] },
    });
    const names = toolNames(run);
    assert.ok(names.includes('add_note'), `add_note listed: ${names}`);
    assert.ok(!names.includes('delete_note'), `delete_note hidden: ${names}`);
  });

  it('--method tools/call --tool-name add_note with notes:read fails with the 403 insufficient_scope error', async () => {
    const run = await inspector({
      token: tokens.read,
      method: 'tools/call',
      toolName: 'add_note',
      toolArgs: { text: 'from the inspector' },
      audit: { ops: [['initialize'], ['tools/call', 'add_note']], refused: { add_note: 'notes:write' } },
    });
    assert.equal(run.timedOut, false, run.describe());
    assert.equal(run.code, 1, `exit code 1: ${run.describe()}`);
    assert.match(run.stderr, /Failed to call tool add_note/, run.describe());
    // The SDK's StreamableHTTPError message carries the 403 body (the JSON-RPC error); the
    // status itself is asserted on the server side (audit: 403 insufficient_scope).
    assert.match(run.stderr, /"required_scope":"notes:write"/, run.describe());
    assert.equal(run.stdout.trim(), '', 'nothing on stdout');
  });

  it('--method tools/list without a token fails to connect (401)', async () => {
    const run = await inspector({ token: undefined, method: 'tools/list', audit: { minEvents: 1 } });
    assert.equal(run.timedOut, false, run.describe());
    assert.equal(run.code, 1, `exit code 1: ${run.describe()}`);
    assert.match(run.stderr, /Failed to connect to MCP server/, run.describe());
    assert.match(run.stderr, /authentication required/, run.describe());
  });

  // Last: stops the server and checks its audit log, each Inspector run's events as a group.
  auditLogTest(() => rs, {
    minimum: {
      allowedWithPrincipal: 10, stepUpTool: 1, insufficient_scope: 1, missing_credentials: 1,
    },
  });
});
