"""Wire types of the Gearhall protocol: msgspec Structs, error codes, codecs, schema export.

Everything a client and the server exchange is declared here, once, and both encodings
(``gearhall.v1.json`` and ``gearhall.v1.msgpack``) are generated from the same Structs.
This package imports msgspec and the standard library only; nothing here does I/O.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
SUBPROTOCOL_JSON = "gearhall.v1.json"
SUBPROTOCOL_MSGPACK = "gearhall.v1.msgpack"
SUBPROTOCOLS = (SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON)
