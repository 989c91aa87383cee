// End to end with the official Python MCP SDK (`mcp`, pinned in requirements.txt) as the
// client: examples/notes_server behind tower-mcp-auth, tokens from oidc-provider (as.mjs) by
// client credentials, handed to the Python client as `Authorization: Bearer` headers.
//
// Setup (in `before`, nothing is skipped): python3 (or INTEROP_PYTHON) must exist; the
// virtualenv tests/interop/.venv is created if missing (or unusable) and `pip install -r
// requirements.txt` runs whenever requirements.txt changed since the last install (a stamp
// file in the venv); then every pin is compared with what is installed.
//
// python_client.py runs three cases against one server: a notes:read token (initialize,
// tools/list without add_note, whoami = the token's subject, list_notes, add_note refused by
// the 403 insufficient_scope, whoami again on the same session), a notes:read notes:write
// token (add_note works) and no token (initialize fails on the 401). It prints a JSON summary
// including its own request ledger: its httpx2 client gives every request its own
// `x-request-id` (PREFIX-N) and records what was sent and the status that came back, so the
// audit-log check is the strict one of the other suites (one event per request).
//
// Two servers: the default stateless JSON mode, and `--sessions` (Mcp-Session-Id, SSE
// responses, the SDK's GET stream and DELETE at close).
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';

import {
  HERE, bearerChallenge, decodeJwt, describeRun, expectAudit, finishRequest, getToken, runProcess, sha256b64u,
  startAuthorizationServer, startNotesServer, stopChild, trackRequest,
} from './lib.mjs';
import { auditLogTest } from './audit.mjs';

const ALG = 'ES256';
const SUITE_TIMEOUT_MS = 840_000;
const SETUP_TIMEOUT_MS = 600_000;
const PIP_TIMEOUT_MS = 480_000;
const CLIENT_TIMEOUT_MS = 120_000;

const PYTHON = process.env.INTEROP_PYTHON || 'python3';
const VENV = path.join(HERE, '.venv');
const VENV_PYTHON = path.join(VENV, 'bin', 'python');
const REQUIREMENTS = path.join(HERE, 'requirements.txt');
const STAMP = path.join(VENV, '.interop-requirements.sha256');
const CLIENT_SCRIPT = path.join(HERE, 'python_client.py');
const PY_ENV = { PYTHONUNBUFFERED: '1', PYTHONDONTWRITEBYTECODE: '1', PIP_DISABLE_PIP_VERSION_CHECK: '1' };

/** name → version of the `==` pins of requirements.txt (names normalized as in PEP 503). */
const normalize = (name) => name.toLowerCase().replace(/[-_.]+/g, '-');
function pins() {
  const out = {};
  for (const raw of readFileSync(REQUIREMENTS, 'utf8').split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) continue;
    const m = /^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)$/.exec(line);
    assert.ok(m, `requirements.txt: not an exact pin: ${JSON.stringify(line)}`);
    out[normalize(m[1])] = m[2];
  }
  return out;
}

async function run(name, command, args, options = {}) {
  const result = await runProcess(name, command, args, { ...options, env: { ...PY_ENV, ...options.env } });
  return { ...result, ok: result.code === 0 && !result.timedOut, describe: () => describeRun(name, result) };
}

/**
 * The virtualenv with the pinned SDK: created if missing or unusable, `pip install -r` when
 * requirements.txt changed, then every pin checked against what is installed. Returns the
 * installed versions.
 */
async function ensureVenv(t) {
  const note = (msg) => (typeof t?.diagnostic === 'function' ? t.diagnostic(msg) : process.stderr.write(`[python-sdk] ${msg}\n`));
  let python;
  try {
    python = await run('python3 --version', PYTHON, ['--version']);
  } catch (err) {
    throw new Error(`${PYTHON} is required by python-sdk.test.mjs (set INTEROP_PYTHON to use another interpreter): ${err.message}`);
  }
  assert.ok(python.ok, `${PYTHON} --version: ${python.describe()}`);
  const systemVersion = (python.stdout + python.stderr).trim();

  if (existsSync(VENV_PYTHON)) {
    const probe = await run('venv python', VENV_PYTHON, ['-c', 'import sys; print(sys.version)']).catch((err) => ({ ok: false, err }));
    if (!probe.ok) {
      note(`${VENV} is unusable, recreating it`);
      rmSync(VENV, { recursive: true, force: true });
    }
  }
  if (!existsSync(VENV_PYTHON)) {
    note(`creating ${VENV} with ${systemVersion}`);
    const venv = await run('python3 -m venv', PYTHON, ['-m', 'venv', VENV], { timeoutMs: 120_000 });
    assert.ok(venv.ok, `${PYTHON} -m venv ${VENV} failed (Debian/Ubuntu: install python3-venv): ${venv.describe()}`);
  }
  const pip = await run('pip --version', VENV_PYTHON, ['-m', 'pip', '--version']);
  assert.ok(pip.ok, `pip is missing in ${VENV} (python3 -m ensurepip, or install python3-pip): ${pip.describe()}`);

  const stamp = createHash('sha256').update(readFileSync(REQUIREMENTS)).update(systemVersion).digest('hex');
  if (!existsSync(STAMP) || readFileSync(STAMP, 'utf8').trim() !== stamp) {
    note(`pip install -r requirements.txt into ${VENV}`);
    rmSync(STAMP, { force: true });
    const install = await run('pip install', VENV_PYTHON, [
      '-m', 'pip', 'install', '--no-input', '--quiet', '--disable-pip-version-check', '-r', REQUIREMENTS,
    ], { timeoutMs: PIP_TIMEOUT_MS });
    assert.ok(install.ok, `pip install -r ${REQUIREMENTS} failed: ${install.describe()}`);
  }

  const wanted = pins();
  assert.ok(wanted.mcp, 'requirements.txt pins mcp');
  const probe = await run('installed versions', VENV_PYTHON, ['-c', [
    'import json, sys, importlib.metadata as m',
    'out = {}',
    'for name in json.loads(sys.argv[1]):',
    '    try: out[name] = m.version(name)',
    '    except m.PackageNotFoundError: out[name] = None',
    'print(json.dumps(out))',
  ].join('\n'), JSON.stringify(Object.keys(wanted))]);
  assert.ok(probe.ok, probe.describe());
  const installed = JSON.parse(probe.stdout.trim().split('\n').pop());
  const wrong = Object.entries(wanted).filter(([name, v]) => installed[name] !== v).map(([name, v]) => `${name}: pinned ${v}, installed ${installed[name]}`);
  assert.deepEqual(wrong, [], `${VENV} does not match requirements.txt (delete it to start over)`);
  writeFileSync(STAMP, `${stamp}\n`);
  return installed;
}

/** Feeds the Python client's ledger into the server's (see trackRequest), with what each event must say. */
function importLedger(server, summary, tokens) {
  const entries = [];
  for (const e of summary.ledger ?? []) {
    const entry = trackRequest(e.url, {
      id: e.id,
      method: e.method,
      headers: { authorization: e.authorization, 'mcp-session-id': e.session_ids },
      body: e.body ?? undefined,
    });
    assert.ok(entry, `the Python client sent ${e.method} ${e.url}, not to the notes_server under test`);
    if (e.status === null || e.status === undefined) finishRequest(entry, { error: new Error('no response recorded by the Python client') });
    else finishRequest(entry, { status: e.status, wwwAuthenticate: e.www_authenticate });
    let rpc;
    try {
      rpc = JSON.parse(e.body);
    } catch {
      rpc = undefined;
    }
    if (entry.bearer === undefined) expectAudit({ audit: entry }, { reason: 'missing_credentials', decision: 'deny' });
    else if (rpc?.method === 'tools/call' && rpc.params?.name === 'add_note' && entry.bearer === tokens.read) {
      expectAudit({ audit: entry }, {
        decision: 'deny', reason: 'insufficient_scope', requiredScopes: 'notes:write', mcp: [{ method: 'tools/call', target: 'add_note' }],
      });
    } else expectAudit({ audit: entry }, { decision: 'allow', principal: true });
    entries.push({ ...e, entry });
  }
  return entries;
}

const rpcOf = (e) => {
  try {
    const m = JSON.parse(e.body);
    return m.method === 'tools/call' ? `tools/call ${m.params?.name}` : (m.method ?? 'response');
  } catch {
    return undefined;
  }
};

describe(`Python MCP SDK client against notes_server (${ALG})`, { timeout: SUITE_TIMEOUT_MS }, () => {
  let as;
  let installed;
  const servers = [];

  before(async (t) => {
    installed = await ensureVenv(t);
    as = await startAuthorizationServer(ALG);
  }, { timeout: SETUP_TIMEOUT_MS });

  after(async () => {
    await Promise.all([...servers.map((s) => s.child), as?.child].filter(Boolean).map((c) => stopChild(c)));
    if (process.env.INTEROP_LOGS) {
      for (const l of [as?.log, ...servers.map((s) => s.log)].filter(Boolean)) process.stderr.write(`--- ${l.name} ---\n${l.text}\n`);
    }
  });

  for (const mode of ['stateless', 'sessions']) {
    describe(`${mode === 'sessions' ? '--sessions (SSE, Mcp-Session-Id)' : 'stateless JSON'} server`, () => {
      let rs;
      let tokens;
      let summary;
      let ledger;
      const caseOf = (name) => {
        assert.ok(summary, 'the Python client ran (see the first test of this group)');
        const c = summary.cases?.[name];
        assert.ok(c, `case ${name} in ${JSON.stringify(summary).slice(0, 2000)}`);
        assert.equal(c.crashed, undefined, `case ${name} crashed: ${JSON.stringify(c.crashed)}`);
        return c;
      };
      const requestsOf = (token) => ledger.filter((e) => (token === undefined ? e.authorization.length === 0 : e.authorization[0] === `Bearer ${token}`));

      before(async () => {
        rs = await startNotesServer(as.issuer, { args: mode === 'sessions' ? ['--sessions'] : [] });
        servers.push(rs);
        const read = (await getToken(as.issuer, { resource: rs.resource, scope: 'notes:read' })).access_token;
        const write = (await getToken(as.issuer, { resource: rs.resource, scope: 'notes:read notes:write' })).access_token;
        tokens = { read, write };
      });

      it('python_client.py (ClientSession over streamable_http_client) runs every case', async (t) => {
        const cfg = {
          url: rs.resource,
          request_id_prefix: `python-${process.pid}-${mode}`,
          timeout_s: 20,
          overall_timeout_s: 90,
          cases: {
            read: { token: tokens.read, subject: decodeJwt(tokens.read).payload.sub },
            write: { token: tokens.write, subject: decodeJwt(tokens.write).payload.sub },
            none: {},
          },
        };
        const result = await run('python_client.py', VENV_PYTHON, [CLIENT_SCRIPT], { input: JSON.stringify(cfg), timeoutMs: CLIENT_TIMEOUT_MS });
        const last = result.stdout.trim().split('\n').pop() ?? '';
        try {
          summary = JSON.parse(last);
        } catch {
          assert.fail(`python_client.py printed no JSON summary: ${result.describe()}`);
        }
        ledger = importLedger(rs, summary, tokens);
        t.diagnostic(`python ${summary.python}, mcp ${summary.sdk?.mcp}, httpx2 ${summary.sdk?.httpx2}; ${ledger.length} requests in ${result.ms} ms`);
        assert.deepEqual(summary.failures, [], `python_client.py reported failures: ${result.describe()}`);
        assert.ok(result.ok, result.describe());
        assert.equal(summary.sdk.mcp, installed.mcp, 'the pinned mcp ran');
        for (const e of ledger) assert.ok(Number.isInteger(e.status), `${e.id} ${e.method}: a response`);
      });

      it('notes:read: initialize, tools/list without add_note/delete_note', () => {
        const c = caseOf('read');
        assert.equal(c.initialize.ok, true, JSON.stringify(c.initialize));
        assert.equal(c.initialize.server_info.name, 'notes-server');
        assert.match(c.initialize.protocol_version, /^\d{4}-\d\d-\d\d$/);
        assert.deepEqual(c.initialize.http.map((h) => h.status), [200]);
        assert.ok(c.tools.includes('whoami') && c.tools.includes('list_notes'), `listed: ${c.tools}`);
        assert.ok(!c.tools.includes('add_note') && !c.tools.includes('delete_note'), `filtered: ${c.tools}`);
        // Every request of this case carried exactly the token it was given.
        const reqs = requestsOf(tokens.read);
        assert.ok(reqs.length >= 6, `requests with the notes:read token: ${reqs.length}`);
      });

      it("notes:read: whoami returns the token's subject, client_id, scopes and thumbprint", () => {
        const c = caseOf('read');
        const { payload } = decodeJwt(tokens.read);
        assert.equal(c.whoami.is_error, false, c.whoami.text);
        assert.equal(c.whoami.json.subject, payload.sub);
        assert.equal(c.whoami.json.client_id, payload.client_id);
        assert.equal(c.whoami.json.issuer, as.issuer);
        assert.deepEqual(c.whoami.json.scopes, ['notes:read']);
        assert.equal(c.whoami.json.token_thumbprint, sha256b64u(tokens.read));
        assert.deepEqual(c.whoami.http.map((h) => h.status), [200]);
      });

      it('notes:read: list_notes succeeds', () => {
        const c = caseOf('read');
        assert.equal(c.list_notes.is_error, false, c.list_notes.text);
        assert.ok(Array.isArray(JSON.parse(c.list_notes.text)), c.list_notes.text);
        assert.deepEqual(c.list_notes.http.map((h) => h.status), [200]);
      });

      it('notes:read: add_note fails: HTTP 403 insufficient_scope scope="notes:write", surfaced as MCPError -32600', () => {
        const c = caseOf('read');
        assert.equal(c.add_note.ok, false, JSON.stringify(c.add_note));
        // What the SDK raised: mcp 2.x turns the JSON-RPC error in the 403 body into MCPError
        // (it does not expose the HTTP status; the httpx2 response hook saw it).
        assert.equal(c.add_note.error.type, 'MCPError', JSON.stringify(c.add_note.error));
        assert.equal(c.add_note.error.code, -32600);
        assert.deepEqual(c.add_note.error.data, { required_scope: 'notes:write' });
        // What went over the wire: one POST, one 403, no retry.
        assert.equal(c.add_note.http.length, 1, JSON.stringify(c.add_note.http));
        const [res] = c.add_note.http;
        assert.equal(res.status, 403);
        const challenge = bearerChallenge(res.www_authenticate);
        assert.equal(challenge.error, 'insufficient_scope');
        assert.equal(challenge.scope, 'notes:write');
        assert.equal(challenge.resource_metadata, `${rs.origin}/.well-known/oauth-protected-resource/mcp`);
        // The session is still usable after the refusal.
        assert.equal(c.whoami_after.is_error, false);
        assert.deepEqual(c.whoami_after.http.map((h) => h.status), [200]);
      });

      it('notes:read notes:write: tools/list shows add_note, add_note succeeds', () => {
        const c = caseOf('write');
        assert.equal(c.initialize.ok, true, JSON.stringify(c.initialize));
        assert.ok(c.tools.includes('add_note') && !c.tools.includes('delete_note'), `listed: ${c.tools}`);
        assert.equal(c.whoami.json.subject, decodeJwt(tokens.write).payload.sub);
        assert.deepEqual(c.whoami.json.scopes, ['notes:read', 'notes:write']);
        assert.equal(c.add_note.ok, true, JSON.stringify(c.add_note));
        assert.match(c.add_note.text, /written by the Python SDK \(write\)/);
        assert.deepEqual(c.add_note.http.map((h) => h.status), [200]);
      });

      it('no token: initialize fails on the 401 with resource_metadata', () => {
        const c = caseOf('none');
        assert.equal(c.initialize.ok, false, JSON.stringify(c.initialize));
        assert.equal(c.initialize.error.type, 'MCPError', JSON.stringify(c.initialize.error));
        assert.deepEqual(c.initialize.http.map((h) => h.status), [401]);
        const challenge = bearerChallenge(c.initialize.http[0].www_authenticate);
        assert.equal(challenge.error, undefined);
        assert.equal(challenge.resource_metadata, `${rs.origin}/.well-known/oauth-protected-resource/mcp`);
        assert.equal(requestsOf(undefined).length, 1, 'one request without a token');
      });

      if (mode === 'sessions') {
        it('--sessions: each client keeps its Mcp-Session-Id, opens the GET stream and DELETEs at close', () => {
          for (const name of ['read', 'write']) {
            const reqs = requestsOf(tokens[name]);
            const [init, ...rest] = reqs;
            assert.equal(rpcOf(init), 'initialize');
            assert.deepEqual(init.session_ids, []);
            const ids = new Set(rest.flatMap((e) => e.session_ids));
            assert.equal(ids.size, 1, `${name}: one session id on every later request`);
            assert.ok(rest.every((e) => e.session_ids.length === 1), `${name}: every later request carries it`);
            const get = rest.filter((e) => e.method === 'GET');
            assert.ok(get.length >= 1 && get.every((e) => e.status === 200), `${name}: GET stream: ${JSON.stringify(get.map((e) => e.status))}`);
            const del = rest.filter((e) => e.method === 'DELETE');
            assert.equal(del.length, 1, `${name}: one DELETE`);
            assert.ok(del[0].status >= 200 && del[0].status < 300, `${name}: DELETE → ${del[0].status}`);
            const posts = rest.filter((e) => e.method === 'POST' && rpcOf(e) !== 'notifications/initialized' && e.status === 200);
            assert.ok(posts.every((e) => /^text\/event-stream/.test(e.content_type ?? '')), `${name}: SSE responses`);
          }
          const ids = new Set(ledger.flatMap((e) => e.session_ids));
          assert.equal(ids.size, 2, 'two sessions, one per client');
        });
      } else {
        it('stateless: no Mcp-Session-Id, no GET stream, no DELETE; JSON responses', () => {
          assert.ok(ledger.every((e) => e.session_ids.length === 0));
          assert.ok(ledger.every((e) => e.method === 'POST'), JSON.stringify(ledger.map((e) => e.method)));
          const answered = ledger.filter((e) => e.status === 200);
          assert.ok(answered.every((e) => /^application\/json/.test(e.content_type ?? '')), 'JSON responses');
        });
      }

      // Last: stops this server and checks its audit log against the Python client's ledger.
      auditLogTest(() => rs, {
        minimum: {
          allowedWithPrincipal: 12, stepUpTool: 1, insufficient_scope: 1, missing_credentials: 1,
        },
      });
    });
  }
});
