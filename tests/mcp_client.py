"""A real MCP client session (official SDK) for tests/mcp.rs.

Usage: mcp_client.py URL TOOL [TOOL...]
Runs initialize (the legacy handshake), tools/list, then tools/call of each TOOL, and
prints one JSON object: {"server", "tools", "calls": {TOOL: {"ok", "text"|"code","message"}}}.
"""
import asyncio
import json
import sys

from mcp import Client
from mcp.shared.exceptions import MCPError

ARGS = {"search": {"query": "mesh"}, "add": {"a": 2, "b": 3}}


async def main(url, tools):
    out = {"calls": {}}
    async with Client(url, mode="legacy", read_timeout_seconds=10) as client:
        out["server"] = client.server_info.name if client.server_info else None
        listed = await client.list_tools()
        out["tools"] = sorted(t.name for t in listed.tools)
        for tool in tools:
            try:
                r = await client.call_tool(tool, ARGS.get(tool, {}))
                text = "".join(getattr(c, "text", "") for c in r.content)
                out["calls"][tool] = {"ok": not r.is_error, "text": text}
            except MCPError as e:
                out["calls"][tool] = {"ok": False, "code": e.error.code, "message": e.error.message}
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], sys.argv[2:]))
