//! `GET /openapi.json`: an OpenAPI 3.0 description of this API, written by hand.
//! Resource bodies are described loosely (`object`): their schema is DESIGN §3.

use axum::Json;
use serde_json::{Value, json};

pub async fn document() -> Json<Value> {
    Json(spec())
}

fn error_response(description: &str) -> Value {
    json!({ "description": description,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn etag_header() -> Value {
    json!({ "ETag": { "description": "\"<version>\": the store revision of the resource's last write",
                      "schema": { "type": "string" } } })
}

/// The whole document.
pub fn spec() -> Value {
    let kind = json!({ "name": "kind", "in": "path", "required": true,
                       "schema": { "type": "string", "enum": ["clusters", "routes", "listeners", "policies", "telemetry"] } });
    let name = json!({ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } });
    let if_match = json!({ "name": "If-Match", "in": "header", "required": false,
                           "description": "\"<version>\" or *: the write happens only if it matches (else 412)",
                           "schema": { "type": "string" } });
    let resource = json!({ "$ref": "#/components/schemas/Resource" });
    let mut resource_ok = json_response("the resource", resource.clone());
    resource_ok["headers"] = etag_header();
    let unauthorized = error_response("missing or wrong bearer token");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Trellis control plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Resources (DESIGN §3) for the Trellis mesh, proxy status and CSR signing. \
                            Every path but /healthz needs `Authorization: Bearer <token>` when the \
                            control plane runs with --token-file. Writes are durable before they are answered."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": {
                    "error": { "type": "string" },
                    "field": { "type": "string", "description": "the field to blame, e.g. routes[api].backends[0].cluster" },
                    "more": { "type": "array", "items": { "type": "string" } } } },
                "Resource": { "type": "object", "required": ["name"],
                              "description": "a cluster, route, listener, policy (DESIGN §3) or telemetry (DESIGN §14)",
                              "properties": { "name": { "type": "string" } }, "additionalProperties": true },
                "List": { "type": "object", "properties": {
                    "kind": { "type": "string" }, "revision": { "type": "integer" },
                    "items": { "type": "array", "items": resource.clone() },
                    "versions": { "type": "object", "additionalProperties": { "type": "integer" } } } },
                "Proxy": { "type": "object", "properties": {
                    "id": { "type": "string" }, "service": { "type": "string", "nullable": true },
                    "zone": { "type": "string", "nullable": true },
                    "inbound_address": { "type": "string", "nullable": true },
                    "connected": { "type": "boolean" }, "connected_at": { "type": "string" },
                    "disconnected_at": { "type": "string", "nullable": true },
                    "sent_version": { "type": "integer", "nullable": true },
                    "acked_version": { "type": "integer", "nullable": true },
                    "pushes": { "type": "integer" },
                    "bytes_sent": { "type": "integer", "description": "protobuf-encoded bytes of every response on this stream" },
                    "last_push": { "type": "object", "nullable": true, "properties": {
                        "version": { "type": "integer" }, "resources": { "type": "integer" },
                        "removed": { "type": "integer" }, "bytes": { "type": "integer" } } },
                    "last_nack": { "type": "object", "nullable": true, "properties": {
                        "version": { "type": "integer" }, "error": { "type": "string" }, "at": { "type": "string" } } } } }
            }
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/healthz": { "get": { "summary": "liveness, and the store's state", "security": [],
                "responses": { "200": json_response("ok", json!({ "type": "object", "properties": {
                    "status": { "type": "string" },
                    "store": { "type": "object", "properties": {
                        "engine": { "type": "string", "enum": ["embedded", "etcd"] },
                        "at": { "type": "string" },
                        "connected": { "type": "boolean", "description": "etcd: the watch is established; while false, writes get 503" },
                        "revision": { "type": "integer" },
                        "relists": { "type": "integer", "description": "etcd: listings after a compaction" },
                        "invalid_values": { "type": "integer", "description": "values in the store that failed validation since the start (skipped)" },
                        "invalid": { "type": "object", "additionalProperties": { "type": "string" } } } } } })) } } },
            "/openapi.json": { "get": { "summary": "this document",
                "responses": { "200": json_response("OpenAPI 3 document", json!({ "type": "object" })), "401": unauthorized } } },
            "/v1/{kind}": { "get": { "summary": "list the resources of a kind", "parameters": [kind.clone()],
                "responses": { "200": json_response("every resource of the kind", json!({ "$ref": "#/components/schemas/List" })),
                               "401": unauthorized, "404": error_response("unknown kind") } } },
            "/v1/{kind}/{name}": {
                "parameters": [kind, name],
                "get": { "summary": "read one resource",
                    "responses": { "200": resource_ok, "401": unauthorized, "404": error_response("no such resource") } },
                "put": { "summary": "create or replace a resource (validated with every stored resource)",
                    "parameters": [if_match.clone()],
                    "requestBody": { "required": true, "content": { "application/json": { "schema": resource } } },
                    "responses": {
                        "200": { "description": "updated (or unchanged)", "headers": etag_header() },
                        "201": { "description": "created", "headers": etag_header() },
                        "400": error_response("invalid resource; `field` names the problem"),
                        "401": unauthorized,
                        "409": error_response("etcd store: other replicas' writes kept overtaking this one; try again"),
                        "412": error_response("If-Match does not match"),
                        "413": error_response("body over 1 MiB, or (etcd store) the resource over etcd's request limit"),
                        "503": error_response("etcd store: etcd unreachable; nothing written") } },
                "delete": { "summary": "delete a resource nothing references", "parameters": [if_match],
                    "responses": {
                        "200": json_response("deleted", json!({ "type": "object" })),
                        "401": unauthorized,
                        "404": error_response("no such resource"),
                        "409": error_response("still referenced (`field` names the reference), or overtaken by other replicas' writes"),
                        "412": error_response("If-Match does not match"),
                        "503": error_response("etcd store: etcd unreachable; nothing deleted") } } },
            "/v1/proxies": { "get": { "summary": "connected and recently disconnected proxies (of this replica)",
                "responses": { "200": json_response("proxy status", json!({ "type": "object", "properties": {
                    "proxies": { "type": "array", "items": { "$ref": "#/components/schemas/Proxy" } } } })),
                    "401": unauthorized.clone() } } },
            "/v1/mesh": { "get": { "summary": "the mesh as /ui shows it: proxies, services, edges with request rates and error ratios from the proxies' stats reports, certificates by expiry",
                "responses": { "200": json_response("mesh view", json!({ "type": "object", "properties": {
                    "revision": { "type": "integer" },
                    "report_interval_seconds": { "type": "number" },
                    "near_expiry_seconds": { "type": "integer" },
                    "proxies": { "type": "array", "items": { "$ref": "#/components/schemas/Proxy" } },
                    "services": { "type": "array", "items": { "type": "object" } },
                    "edges": { "type": "array", "items": { "type": "object", "properties": {
                        "from": { "type": "string" }, "to": { "type": "string" }, "mtls": { "type": "boolean" },
                        "requests_per_second": { "type": ["number", "null"] },
                        "error_ratio": { "type": ["number", "null"] } } } },
                    "certificates": { "type": "array", "items": { "type": "object" } } } })),
                    "401": unauthorized.clone() } } },
            "/ui": { "get": { "summary": "the mesh page (HTML; asks for the token in the browser, then reads /v1/mesh)",
                "responses": { "200": { "description": "text/html" } } } },
            "/v1/certificates": { "post": { "summary": "sign a CSR with the mesh CA",
                "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object",
                    "required": ["csr"], "properties": {
                        "csr": { "type": "string", "description": "PEM; its one URI SAN is the SPIFFE ID" },
                        "ttl": { "type": "string", "description": "validity, default 24h" } } } } } },
                "responses": {
                    "200": json_response("signed", json!({ "type": "object", "properties": {
                        "certificate": { "type": "string", "description": "leaf then CA, PEM" },
                        "spiffe_id": { "type": "string" }, "not_after": { "type": "integer" } } })),
                    "400": error_response("bad CSR"), "401": unauthorized, "413": error_response("body over 1 MiB") } } }
        }
    })
}
