"""Ids and units with names of their own, and the constraints the wire enforces on them."""

from __future__ import annotations

from typing import Annotated, NewType

import msgspec

ItemId = NewType("ItemId", int)

# Request ids are chosen by the client; we only bound them so they fit an int64 everywhere.
MAX_RID = 2**53
RequestId = Annotated[int, msgspec.Meta(ge=0, le=MAX_RID)]
# Item ids on the wire: positive, JavaScript-safe.
WireItemId = Annotated[int, msgspec.Meta(ge=1, le=2**53)]
CompartmentIndex = Annotated[int, msgspec.Meta(ge=0, le=1023)]
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
