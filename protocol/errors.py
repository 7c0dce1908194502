"""The closed set of error codes and the exceptions that carry them to the client.

Every exception a handler may raise on purpose is a :class:`GearhallError`. Its class says
the code; its instance carries the message and the ``details`` the client needs to act
(``retry_after_ms``, ``missing``...). ``server/dispatch.py`` is the only place that turns
one into an error reply, by walking the exception's MRO to the class that declares ``code``.
Codes are unique per declaring class, checked when this module is imported.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from protocol.types import ItemId


class ErrorCode(enum.StrEnum):
    """Error codes on the wire. Closed: a client may switch on them exhaustively."""

    BAD_REQUEST = "bad_request"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    RATE_LIMITED = "rate_limited"
    COOLDOWN_ACTIVE = "cooldown_active"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    INVENTORY_FULL = "inventory_full"
    REQUIREMENTS_NOT_MET = "requirements_not_met"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class GearhallError(Exception):
    """Base of every error that becomes an error reply. Never raised directly."""

    code: ClassVar[ErrorCode]
    _declared: ClassVar[dict[ErrorCode, type[GearhallError]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        # A code belongs to exactly one class, wherever that class is defined: subclasses
        # elsewhere (codec, domains) may specialise a code but never declare one again.
        super().__init_subclass__()
        declared = cls.__dict__.get("code")
        if declared is not None:
            owner = GearhallError._declared.setdefault(declared, cls)
            if owner is not cls:
                raise TypeError(f"error code {declared} declared twice: {owner}, {cls}")

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, object] = details


class BadRequestError(GearhallError):
    """The client's fault: the message could not be decoded or is not valid here."""

    code = ErrorCode.BAD_REQUEST


class UnauthenticatedError(GearhallError):
    """The client's fault: no session yet (send ``session.hello``) or the token is invalid."""

    code = ErrorCode.UNAUTHENTICATED


class ForbiddenError(GearhallError):
    """The client's fault: the session may not do this."""

    code = ErrorCode.FORBIDDEN


class NotFoundError(GearhallError):
    """The client's fault: the thing named does not exist, or is not the player's."""

    code = ErrorCode.NOT_FOUND


class ConflictError(GearhallError):
    """The client's view is stale or the move breaks a game rule in the current state."""

    code = ErrorCode.CONFLICT


class RateLimitedError(GearhallError):
    """The client's fault: too many messages. ``retry_after_ms`` says when to try again."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__("rate limit exceeded", retry_after_ms=retry_after_ms)


class CooldownActiveError(GearhallError):
    """Nobody's fault: the action's cooldown group is not ready yet."""

    code = ErrorCode.COOLDOWN_ACTIVE

    def __init__(self, group: str, retry_after_ms: int, ready_at_ms: int) -> None:
        super().__init__(
            f"cooldown {group!r} is active",
            group=group,
            retry_after_ms=retry_after_ms,
            ready_in_ms=retry_after_ms,
            ready_at_ms=ready_at_ms,
        )


class InsufficientFundsError(GearhallError):
    """The client's fault: the account cannot pay."""

    code = ErrorCode.INSUFFICIENT_FUNDS


class InventoryFullError(GearhallError):
    """No free cell in the target compartment."""

    code = ErrorCode.INVENTORY_FULL

    def __init__(self, compartment: str) -> None:
        super().__init__(f"compartment {compartment!r} is full", compartment=compartment)


class RequirementsNotMetError(GearhallError):
    """The player lacks the level or skill levels an item needs. ``missing`` says which:
    ``{"level": {"required": 5, "current": 3}, "skills": {"alchemy": {...}}}``."""

    code = ErrorCode.REQUIREMENTS_NOT_MET

    def __init__(self, item_id: int, template: str, missing: dict[str, object]) -> None:
        super().__init__(
            f"requirements for {template!r} not met",
            item_id=item_id,
            template=template,
            missing=missing,
        )


class OverloadedError(GearhallError):
    """The player would carry more than they can: an overloaded player picks up nothing."""

    code = ErrorCode.OVERLOADED

    def __init__(self, weight: int, capacity: int, limit: int) -> None:
        super().__init__(
            "too heavy: you would be overloaded",
            carried_weight=weight,
            carry_capacity=capacity,
            overloaded_above=limit,
        )


class UnavailableError(GearhallError):
    """The server's state: shutting down, database unreachable. Retry later."""

    code = ErrorCode.UNAVAILABLE


class InternalError(GearhallError):
    """The server's fault: a bug. The message says nothing about internals."""

    code = ErrorCode.INTERNAL


# Specific errors: subclasses that keep their parent's code and name what is wrong.


class ItemNotOwnedError(NotFoundError):
    def __init__(self, item_id: ItemId) -> None:
        super().__init__(f"item {item_id} is not in your inventory", item_id=item_id)


class SlotIncompatibleError(ConflictError):
    def __init__(self, item_id: ItemId, slot: str, allowed: list[str]) -> None:
        super().__init__(
            f"item {item_id} cannot be equipped in {slot!r}",
            item_id=item_id,
            slot=slot,
            allowed_slots=allowed,
        )


def _check_all_codes_declared() -> dict[ErrorCode, type[GearhallError]]:
    by_code = dict(GearhallError._declared)
    missing = set(ErrorCode) - set(by_code)
    if missing:
        raise TypeError(f"error codes without a class: {sorted(missing)}")
    return by_code


ERROR_CLASSES = _check_all_codes_declared()
