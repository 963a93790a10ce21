"""A real MCP server (official SDK, Streamable HTTP) for tests/mcp.rs.

Usage: mcp_server.py PORT [--json]   (--json: answers as application/json, else SSE)
Tools: search (read-only), add, delete_everything (what a policy should deny).
"""
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("trellis-test-tools")


@server.tool()
def search(query: str) -> str:
    """Search the test corpus."""
    return f"results for {query}"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@server.tool()
def delete_everything() -> str:
    """Deletes everything (a tool a caller must not reach)."""
    return "everything deleted"


if __name__ == "__main__":
    server.run(
        transport="streamable-http", host="127.0.0.1", port=int(sys.argv[1]), json_response="--json" in sys.argv[2:]
    )
