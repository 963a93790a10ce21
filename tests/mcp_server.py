"""A real MCP server (official SDK, Streamable HTTP) for tests/mcp.rs.

Usage: mcp_server.py PORT [--json] [--stateless] [--replica NAME] [--broken] [--fail-calls]
                        [--upstream URL]
  --json        answers as application/json (else SSE)
  --stateless   no sessions (any replica answers any request)
  --replica     the name `whoami` answers (default "r0")
  --broken      every tool call fails (a tool error, isError: true)
  --fail-calls  every POST holding a tools/call gets HTTP 503 (a replica failing at the
                HTTP level after reading the request); other requests are served
  --upstream    also a tool `research` (an agent that calls tools): it calls `search` on the
                MCP server at URL, passing on the x-trellis-hops it was called with
Tools: search (read-only), add, delete_everything (what a policy should deny), whoami
(the replica's name), slow (sleeps ms), fail (always a tool error), countdown (progress
notifications over SSE, one every interval_ms). Prompt: summarize.
"""
import asyncio
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

ARGS = sys.argv[2:]
REPLICA = ARGS[ARGS.index("--replica") + 1] if "--replica" in ARGS else "r0"
BROKEN = "--broken" in ARGS
UPSTREAM = ARGS[ARGS.index("--upstream") + 1] if "--upstream" in ARGS else None

server = MCPServer("trellis-test-tools")


def check():
    if BROKEN:
        raise ToolError(f"replica {REPLICA} is broken")


@server.tool()
def search(query: str) -> str:
    """Search the test corpus."""
    check()
    return f"results for {query}"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    check()
    return a + b


@server.tool()
def delete_everything() -> str:
    """Deletes everything (a tool a caller must not reach)."""
    return "everything deleted"


@server.tool()
def whoami() -> str:
    """The replica answering."""
    check()
    return REPLICA


@server.tool()
async def slow(ms: int) -> str:
    """Answers after ms milliseconds."""
    check()
    await asyncio.sleep(ms / 1000)
    return f"slept {ms} ms"


@server.tool()
def fail() -> str:
    """Always fails."""
    raise ToolError("the fail tool failed, as asked")


@server.tool()
async def countdown(steps: int, interval_ms: int, ctx: Context) -> str:
    """Reports progress `steps` times, one every interval_ms."""
    check()
    for i in range(1, steps + 1):
        await ctx.report_progress(i, steps, f"step {i}")
        await asyncio.sleep(interval_ms / 1000)
    return f"counted {steps}"


async def research(query: str, ctx: Context) -> str:
    """Researches by calling the upstream's search (an agent calling a tool)."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    # Passed on like traceparent, so a loop between agents stops at the proxies' max_hops.
    incoming = getattr(ctx.request_context.request, "headers", {})
    hops = incoming.get("x-trellis-hops", "0")
    http = create_mcp_http_client(headers={"x-trellis-hops": hops})
    async with Client(streamable_http_client(UPSTREAM, http_client=http), mode="legacy") as client:
        r = await client.call_tool("search", {"query": query})
    text = "".join(getattr(c, "text", "") for c in r.content)
    if r.is_error:
        raise ToolError(f"search failed: {text}")
    return f"researched at hop {hops}: {text}"


if UPSTREAM:
    server.tool()(research)


@server.prompt()
def summarize() -> str:
    """A prompt (what a policy allowing only tools should deny)."""
    return "Summarize the search results."


def fail_calls(app):
    """ASGI middleware: 503 for a POST whose body holds a tools/call; others pass through."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await app(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if b'"tools/call"' in body:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"text/plain")]})
            return await send({"type": "http.response.body", "body": f"replica {REPLICA} fails calls".encode()})
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await app(scope, replay, send)

    return wrapped


if __name__ == "__main__":
    options = dict(json_response="--json" in ARGS, stateless_http="--stateless" in ARGS)
    if "--fail-calls" in ARGS:
        import uvicorn

        app = fail_calls(server.streamable_http_app(**options))
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    else:
        server.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]), **options)
