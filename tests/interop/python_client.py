"""A client of examples/notes_server built on the official Python MCP SDK (`mcp`, pinned in
requirements.txt), driven by python-sdk.test.mjs.

Reads one JSON object on stdin:

    {
      "url": "http://127.0.0.1:PORT/mcp",       # the server's resource URL
      "request_id_prefix": "python-1234-a",     # x-request-id of each request: PREFIX-N
      "timeout_s": 20,                          # per MCP request
      "overall_timeout_s": 90,                  # all cases together
      "cases": {
        "read":    {"token": "...", "subject": "interop-client"},   # notes:read
        "write":   {"token": "...", "subject": "interop-client"},   # notes:read notes:write
        "none":    {}                                                # no Authorization
      }
    }

For each case it connects with the SDK's streamable HTTP client
(`mcp.client.streamable_http.streamable_http_client`, called `streamablehttp_client` in the
1.x SDKs) over an httpx2 client whose default headers carry `Authorization: Bearer TOKEN`,
runs `ClientSession.initialize()`, `list_tools()` and a few `call_tool()`s, and records what
the SDK returned or raised. The httpx2 client's event hooks give every request its own
`x-request-id` and record the request ledger (method, path, headers that matter, body,
status, WWW-Authenticate) that the Node side feeds into the audit-log check.

Prints one JSON object (the summary) as the last line of stdout; exits 0 when every step
behaved as the SDK is expected to behave against this server, 1 otherwise (the summary
then says which step, under "failures"). Diagnostics go to stderr.
"""

from __future__ import annotations

import json
import platform
import sys
import traceback
from importlib.metadata import version
from typing import Any

import anyio
import httpx2

from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def log(*args: Any) -> None:
    print("[python_client]", *args, file=sys.stderr, flush=True)


class Ledger:
    """Every HTTP request the SDK's httpx2 client sends: ids, what was sent, what came back."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.entries: list[dict[str, Any]] = []
        self.by_id: dict[str, dict[str, Any]] = {}

    async def on_request(self, request: httpx2.Request) -> None:
        rid = f"{self.prefix}-{len(self.entries) + 1}"
        request.headers["x-request-id"] = rid
        try:
            body = request.content.decode("utf-8")
        except Exception:  # a streaming body: not read here
            body = None
        entry = {
            "id": rid,
            "method": request.method,
            "url": str(request.url),
            "authorization": request.headers.get_list("authorization"),
            "session_ids": request.headers.get_list("mcp-session-id"),
            "protocol_version": request.headers.get("mcp-protocol-version"),
            "accept": request.headers.get("accept"),
            "body": body,
            "status": None,
            "www_authenticate": None,
            "content_type": None,
        }
        self.entries.append(entry)
        self.by_id[rid] = entry

    async def on_response(self, response: httpx2.Response) -> None:
        entry = self.by_id.get(response.request.headers.get("x-request-id", ""))
        if entry is None:
            return
        entry["status"] = response.status_code
        values = response.headers.get_list("www-authenticate")
        entry["www_authenticate"] = ", ".join(values) if values else None
        entry["content_type"] = response.headers.get("content-type")

    def since(self, mark: int) -> list[dict[str, Any]]:
        return self.entries[mark:]


def rpc_method(entry: dict[str, Any]) -> str | None:
    try:
        msg = json.loads(entry["body"] or "")
    except ValueError:
        return None
    name = msg.get("method")
    if name == "tools/call":
        name = f"tools/call {msg.get('params', {}).get('name')}"
    return name


def text_of(result: Any) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", None) == "text")


def error_of(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, MCPError):
        out.update(code=exc.code, message=exc.message, data=exc.data)
    return out


def http_of(ledger: Ledger, mark: int, method: str) -> list[dict[str, Any]]:
    """Status and challenge of the requests for one JSON-RPC method since `mark`."""
    return [
        {"id": e["id"], "status": e["status"], "www_authenticate": e["www_authenticate"]}
        for e in ledger.since(mark)
        if rpc_method(e) == method
    ]


async def run_case(cfg: dict[str, Any], name: str, case: dict[str, Any], ledger: Ledger) -> dict[str, Any]:
    timeout = float(cfg.get("timeout_s", 20))
    headers = {}
    if case.get("token"):
        headers["Authorization"] = f"Bearer {case['token']}"
    out: dict[str, Any] = {"failures": []}

    def fail(step: str, why: str) -> None:
        out["failures"].append(f"{name}/{step}: {why}")

    http_client = httpx2.AsyncClient(
        headers=headers,
        timeout=httpx2.Timeout(timeout),
        event_hooks={"request": [ledger.on_request], "response": [ledger.on_response]},
    )
    async with http_client:
        async with streamable_http_client(cfg["url"], http_client=http_client) as (read, write):
            async with ClientSession(read, write, read_timeout_seconds=timeout) as session:
                mark = len(ledger.entries)
                try:
                    init = await session.initialize()
                except Exception as exc:  # noqa: BLE001 - recorded, judged by the caller
                    out["initialize"] = {"ok": False, "error": error_of(exc), "http": http_of(ledger, mark, "initialize")}
                    if name != "none":
                        fail("initialize", f"raised {exc!r}")
                    return out
                out["initialize"] = {
                    "ok": True,
                    "protocol_version": init.protocol_version,
                    "server_info": init.server_info.model_dump(mode="json", exclude_none=True),
                    "http": http_of(ledger, mark, "initialize"),
                }
                if name == "none":
                    fail("initialize", "succeeded without a token")
                    return out

                tools = await session.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)

                mark = len(ledger.entries)
                who = await session.call_tool("whoami", {})
                out["whoami"] = {"is_error": bool(who.is_error), "text": text_of(who), "http": http_of(ledger, mark, "tools/call whoami")}
                try:
                    me = json.loads(text_of(who))
                except ValueError:
                    me = {}
                out["whoami"]["json"] = me
                if who.is_error or me.get("subject") != case.get("subject"):
                    fail("whoami", f"expected subject {case.get('subject')!r}, got {text_of(who)!r}")

                mark = len(ledger.entries)
                notes = await session.call_tool("list_notes", {})
                out["list_notes"] = {"is_error": bool(notes.is_error), "text": text_of(notes), "http": http_of(ledger, mark, "tools/call list_notes")}
                if notes.is_error:
                    fail("list_notes", text_of(notes))

                mark = len(ledger.entries)
                text = f"written by the Python SDK ({name})"
                try:
                    added = await session.call_tool("add_note", {"text": text})
                    out["add_note"] = {"ok": not added.is_error, "text": text_of(added)}
                except Exception as exc:  # noqa: BLE001
                    out["add_note"] = {"ok": False, "error": error_of(exc)}
                out["add_note"]["http"] = http_of(ledger, mark, "tools/call add_note")
                if name == "read" and out["add_note"]["ok"]:
                    fail("add_note", "succeeded with a notes:read token")
                if name == "write" and not out["add_note"]["ok"]:
                    fail("add_note", f"failed with a notes:write token: {out['add_note']}")

                # The session survives a refused call.
                mark = len(ledger.entries)
                again = await session.call_tool("whoami", {})
                out["whoami_after"] = {"is_error": bool(again.is_error), "http": http_of(ledger, mark, "tools/call whoami")}
                if again.is_error:
                    fail("whoami_after", text_of(again))
    return out


async def main_async(cfg: dict[str, Any]) -> dict[str, Any]:
    ledger = Ledger(cfg["request_id_prefix"])
    summary: dict[str, Any] = {
        "python": platform.python_version(),
        "sdk": {"mcp": version("mcp"), "httpx2": version("httpx2")},
        "client_api": "mcp.client.streamable_http.streamable_http_client + mcp.client.session.ClientSession",
        "cases": {},
        "failures": [],
        "ledger": ledger.entries,
    }
    with anyio.fail_after(float(cfg.get("overall_timeout_s", 90))):
        for name, case in cfg["cases"].items():
            log(f"case {name}")
            try:
                result = await run_case(cfg, name, case, ledger)
            except BaseException as exc:  # noqa: BLE001 - includes ExceptionGroup, cancellation
                if isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise
                log("".join(traceback.format_exception(exc)))
                result = {"crashed": error_of(exc), "failures": [f"{name}: crashed: {exc!r}"]}
            summary["cases"][name] = result
            summary["failures"].extend(result.get("failures", []))
    return summary


def main() -> int:
    cfg = json.load(sys.stdin)
    try:
        summary = anyio.run(main_async, cfg)
    except TimeoutError:
        print(json.dumps({"failures": [f"timed out after {cfg.get('overall_timeout_s', 90)} s"]}), flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    return 0 if not summary["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
