"""The protocol as JSON Schema and as an AsyncAPI 3.0.0 document, generated from the Structs.

Nothing here is written by hand that the Structs already say: field types, constraints,
defaults, tags and docstrings all come from :func:`msgspec.json.schema_components`. What is
added is only what the Structs cannot say: the transport (one WebSocket endpoint, two
subprotocols), the direction of each message and the meaning of each error code.

Choices worth knowing when reading the output:

* The JSON Schema document validates one frame: its top level is ``oneOf`` a client message
  (``#/$defs/ClientMessage``) or a server message (``#/$defs/ServerMessage``). Client and
  server tags are disjoint, so exactly one branch can match.
* The AsyncAPI document describes the server: client -> server messages are ``receive``
  operations, server -> client messages are ``send`` operations.
* AsyncAPI's Schema Object wants ``discriminator`` to be a property name, while msgspec
  emits the OpenAPI object form. It is an annotation only (every union member pins its tag
  with ``enum``), so the AsyncAPI copy drops it instead of emitting an invalid document.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
from typing import Final, Literal

import msgspec

from protocol import PROTOCOL_VERSION, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK, SUBPROTOCOLS
from protocol.base import tag_of
from protocol.errors import ERROR_CLASSES, ErrorCode, GearhallError
from protocol.messages import CLIENT_MESSAGES, SERVER_MESSAGES, AnyServerMessage, ClientMessage

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION: Final = "3.0.0"
SERVER_HOST: Final = "127.0.0.1:8765"
CHANNEL_ID: Final = "gearhall"

_DEFS_REF: Final = "#/$defs/{name}"
_COMPONENTS_REF: Final = "#/components/schemas/{name}"

_TRANSPORT = (
    f"One WebSocket endpoint at `/`. The client picks the encoding with the subprotocol: "
    f"`{SUBPROTOCOL_JSON}` (JSON text frames) or `{SUBPROTOCOL_MSGPACK}` (MessagePack binary "
    f"frames). Both carry the same messages, described once here. Every client message has "
    f"a namespaced tag `t` and a request id `rid` that its reply echoes; pushes carry no "
    f"`rid`. A message that cannot be decoded gets an `error` reply with code `bad_request`."
)


def server_version() -> str:
    """The installed server's version, or ``0.0.0`` when running from an uninstalled tree."""
    try:
        return importlib.metadata.version("gearhall")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _schema_hook(tp: type) -> dict[str, object]:
    # ``ErrorReply.details`` holds arbitrary values. msgspec treats a bare ``object`` as a
    # custom type and refuses an empty schema for it, so say "anything" with a description.
    if tp is object:
        return {"description": "Any JSON value (any MessagePack value in msgpack frames)."}
    raise NotImplementedError


def _error_code_description() -> str:
    lines = [f"- `{code.value}`: {_first_paragraph(cls.__doc__)}" for code, cls in _codes()]
    header = _first_paragraph(ErrorCode.__doc__)
    return header + "\n\n" + "\n".join(lines)


def _codes() -> list[tuple[ErrorCode, type[GearhallError]]]:
    return sorted(ERROR_CLASSES.items(), key=lambda item: item[0].value)


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n", 1)[0].split())


def _components(
    ref_template: str,
) -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
    """Client union schema, server union schema and the named component schemas."""
    (client, server, _), components = msgspec.json.schema_components(
        [ClientMessage, AnyServerMessage, ErrorCode],
        schema_hook=_schema_hook,
        ref_template=ref_template,
    )
    named: dict[str, object] = {}
    for name, schema in components.items():
        named[name] = schema
        # msgspec copies raw docstrings; strip their source indentation for readers.
        if isinstance(schema.get("description"), str):
            named[name] = {**schema, "description": inspect.cleandoc(schema["description"])}
    named["ErrorCode"] = {**components["ErrorCode"], "description": _error_code_description()}
    return client, server, named


def json_schema() -> dict[str, object]:
    """One JSON Schema (2020-12) document that a single frame, either direction, validates
    against. ``$defs`` holds every Struct, the two unions and the ``ErrorCode`` enum."""
    client, server, defs = _components(_DEFS_REF)
    if {"ClientMessage", "ServerMessage"} & defs.keys():
        raise TypeError("a Struct is named like a union: rename it, $defs would collide")
    defs["ClientMessage"] = {
        "title": "ClientMessage",
        "description": "A message the client sends; the server answers it with `rid` echoed.",
        **client,
    }
    defs["ServerMessage"] = {
        "title": "ServerMessage",
        "description": "A message the server sends: a reply (with `rid`) or a push.",
        **server,
    }
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:gearhall:protocol:v{PROTOCOL_VERSION}",
        "title": f"Gearhall protocol v{PROTOCOL_VERSION}",
        "description": _TRANSPORT,
        "oneOf": [{"$ref": "#/$defs/ClientMessage"}, {"$ref": "#/$defs/ServerMessage"}],
        "$defs": defs,
    }


def _without_discriminator(node: object) -> object:
    if isinstance(node, dict):
        return {k: _without_discriminator(v) for k, v in node.items() if k != "discriminator"}
    if isinstance(node, list):
        return [_without_discriminator(v) for v in node]
    return node


def _message(cls: type[msgspec.Struct]) -> dict[str, object]:
    message: dict[str, object] = {
        "name": tag_of(cls),
        "title": cls.__name__,
        "payload": {"$ref": _COMPONENTS_REF.format(name=cls.__name__)},
    }
    summary = _first_paragraph(cls.__doc__)
    if summary:
        message["summary"] = summary
    if "rid" in cls.__struct_fields__:
        message["correlationId"] = {
            "description": "The client-chosen request id, echoed by the reply.",
            "location": "$message.payload#/rid",
        }
    return message


def _operation_id(action: str, cls: type[msgspec.Struct]) -> str:
    return action + cls.__name__


def asyncapi() -> dict[str, object]:
    """An AsyncAPI 3.0.0 document of the WebSocket endpoint, from the server's side.

    Client messages are ``receive`` operations and server messages ``send`` operations;
    payloads reference ``#/components/schemas``, the same schemas as :func:`json_schema`.
    """
    _, _, schemas = _components(_COMPONENTS_REF)
    directions: list[tuple[str, tuple[type[msgspec.Struct], ...]]] = [
        ("receive", CLIENT_MESSAGES),
        ("send", SERVER_MESSAGES),
    ]
    channel_ref = {"$ref": f"#/channels/{CHANNEL_ID}"}
    messages: dict[str, object] = {}
    channel_messages: dict[str, object] = {}
    operations: dict[str, object] = {}
    for action, classes in directions:
        for cls in classes:
            name = cls.__name__
            messages[name] = _message(cls)
            channel_messages[name] = {"$ref": f"#/components/messages/{name}"}
            operations[_operation_id(action, cls)] = {
                "action": action,
                "channel": channel_ref,
                "summary": f"`{tag_of(cls)}`, "
                + ("client to server" if action == "receive" else "server to client"),
                "messages": [{"$ref": f"#/channels/{CHANNEL_ID}/messages/{name}"}],
            }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Gearhall",
            "version": server_version(),
            "description": (
                f"Gearhall protocol v{PROTOCOL_VERSION}. {_TRANSPORT} Operations are described "
                f"from the server's side: `receive` is a client message, `send` a server one."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": SERVER_HOST,
                "protocol": "ws",
                "description": (
                    f"Development server. Subprotocols: `{SUBPROTOCOL_JSON}`, "
                    f"`{SUBPROTOCOL_MSGPACK}`."
                ),
            }
        },
        "channels": {
            CHANNEL_ID: {
                "address": "/",
                "title": "Game session",
                "description": (
                    f"The only endpoint. Negotiate `{SUBPROTOCOL_JSON}` or "
                    f"`{SUBPROTOCOL_MSGPACK}` with Sec-WebSocket-Protocol; the first message "
                    f"must be `session.hello`."
                ),
                "messages": channel_messages,
                "bindings": {
                    "ws": {
                        "bindingVersion": "0.1.0",
                        "method": "GET",
                        "headers": {
                            "type": "object",
                            "properties": {
                                "Sec-WebSocket-Protocol": {
                                    "type": "string",
                                    "enum": list(SUBPROTOCOLS),
                                    "description": "The encoding of every frame.",
                                }
                            },
                        },
                    }
                },
            }
        },
        "operations": operations,
        "components": {
            "schemas": _without_discriminator(schemas),
            "messages": messages,
        },
    }


def render(fmt: Literal["jsonschema", "asyncapi"]) -> str:
    """The document as pretty JSON with sorted keys, identical from run to run.

    Raises:
        ValueError: ``fmt`` is neither ``"jsonschema"`` nor ``"asyncapi"``.
    """
    builders = {"jsonschema": json_schema, "asyncapi": asyncapi}
    builder = builders.get(fmt)
    if builder is None:
        raise ValueError(f"unknown schema format {fmt!r}")
    return json.dumps(builder(), indent=2, sort_keys=True) + "\n"
