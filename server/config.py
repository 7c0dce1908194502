"""Effective configuration: command-line flags over ``GEARHALL_*`` environment variables over
an optional TOML file over defaults (DESIGN.md §7). ``gearhall config show`` prints it."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec

LogFormat = Literal["console", "json"]
TransportName = Literal["websockets", "picows"]
Durability = Literal["durable", "write-behind"]


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8765
    tick_hz: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 20
    data_dir: str = "./var"
    database_url: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: LogFormat = "console"
    durability: Durability = "durable"
    dev_auth: bool = False
    # A catalog file to store in Postgres and activate at start (for every node). None: run
    # the catalog active in Postgres (the shipped sim/data/templates.toml on first start).
    templates: str | None = None
    # The WebSocket library: websockets (the reference) or picows (Cython; less CPU per
    # message). Both plug into the same connection core (server/session.py).
    transport: TransportName = "websockets"
    # Test only: an echo endpoint at /echo (no subprotocol, the same frame limits) for the
    # Autobahn|Testsuite fuzzing client (tools/autobahn). Never on in production.
    echo_endpoint: bool = False
    # TLS on the game port (wss:// and https:// for the HTTP endpoints). Both or neither;
    # usually a load balancer terminates TLS instead and these stay unset.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # transport limits
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=256)] = 64 * 1024
    outbound_queue_max: Annotated[int, msgspec.Meta(ge=1)] = 1024
    write_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    ping_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    ping_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    rate_limit_per_s: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    rate_limit_burst: Annotated[int, msgspec.Meta(ge=1)] = 400
    # abuse limits before the upgrade (per client IP, per node; docs/accounts.md)
    # Origins browsers may connect from (exact "https://host[:port]"); requests without an
    # Origin header (game clients, launchers) are not affected. Empty: no browser origins.
    allowed_origins: list[str] = msgspec.field(default_factory=list)
    # Addresses of load balancers whose X-Forwarded-For is believed (exact IPs).
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    max_sockets_per_ip: Annotated[int, msgspec.Meta(ge=1)] = 64
    handshakes_per_ip_per_s: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    handshake_burst_per_ip: Annotated[int, msgspec.Meta(ge=1)] = 40
    http_body_max_bytes: Annotated[int, msgspec.Meta(ge=256)] = 16 * 1024
    # accounts
    # A connection that has not said a successful session.hello by then is closed (1008):
    # unauthenticated sockets cost memory and file descriptors and do nothing.
    hello_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    access_token_ttl_s: Annotated[int, msgspec.Meta(ge=10)] = 15 * 60
    session_ttl_s: Annotated[int, msgspec.Meta(ge=60)] = 30 * 24 * 3600
    # argon2id; defaults are OWASP's second recommendation (19 MiB, 2 passes, 1 lane),
    # measured in docs/benchmarks.md
    argon2_time_cost: Annotated[int, msgspec.Meta(ge=1)] = 2
    argon2_memory_kib: Annotated[int, msgspec.Meta(ge=8)] = 19 * 1024
    argon2_parallelism: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Threads that hash passwords (argon2 releases the GIL), and how many hashes may wait
    # for one before logins are answered "unavailable" instead of queueing without bound.
    hash_workers: Annotated[int, msgspec.Meta(ge=1)] = 2
    hash_queue_max: Annotated[int, msgspec.Meta(ge=1)] = 64
    signups_per_ip_per_hour: Annotated[int, msgspec.Meta(ge=1)] = 20
    # OpenID Connect (external login); off while oidc_issuer is unset
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    # persistence
    db_pool_size: Annotated[int, msgspec.Meta(ge=1)] = 8
    snapshot_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    journal_keep_versions: Annotated[int, msgspec.Meta(ge=0)] = 256
    resume_buffer: Annotated[int, msgspec.Meta(ge=0)] = 256
    evict_after_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    shutdown_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    # runtime: generation-0 collection threshold (CPython's default is 700). Every request
    # allocates a few short-lived objects; at the default, collections of the whole heap of
    # players and connections ran often enough to dominate tail latency (docs/benchmarks.md).
    gc_gen0_threshold: Annotated[int, msgspec.Meta(ge=100)] = 50_000
    # Seconds between moving newly loaded players out of the collector's sight (a young
    # collection, then gc.freeze()); 0 turns it off. Without it, a burst of logins is later
    # traversed by one gen-1 and one full collection: 0.2 s and 0.35 s pauses after 1,000
    # logins (docs/benchmarks.md).
    gc_freeze_loaded_s: Annotated[float, msgspec.Meta(ge=0)] = 1.0


class ConfigError(ValueError):
    """The configuration is invalid; the message names the source and the field."""


_FIELDS = {f.name: f for f in msgspec.structs.fields(Settings)}


_LIST_FIELDS = {name for name, f in _FIELDS.items() if getattr(f.type, "__origin__", None) is list}


def _from_env(environ: dict[str, str]) -> dict[str, object]:
    """Environment values as strings (converted by msgspec); list settings are
    comma-separated (``GEARHALL_ALLOWED_ORIGINS=https://a.example,https://b.example``)."""
    values: dict[str, object] = {}
    for name in _FIELDS:
        raw = environ.get(f"GEARHALL_{name.upper()}")
        if raw is not None:
            values[name] = (
                [v.strip() for v in raw.split(",") if v.strip()] if (name in _LIST_FIELDS) else raw
            )
    return values


def load_settings(
    overrides: dict[str, object] | None = None,
    environ: dict[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Merge defaults, the TOML file (``GEARHALL_CONFIG`` or ``config_file``), the environment
    and ``overrides`` (flags; ``None`` values are ignored).

    Raises:
        ConfigError: a value has the wrong type or range, or the file is unreadable.
    """
    env = dict(os.environ if environ is None else environ)
    merged: dict[str, object] = {}
    path = config_file or (Path(env["GEARHALL_CONFIG"]) if env.get("GEARHALL_CONFIG") else None)
    if path is not None:
        try:
            merged.update(tomllib.loads(path.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    merged.update(_from_env(env))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        # strict=False lets environment strings ("8080", "1", "true") convert to their types.
        settings = msgspec.convert(merged, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigError("invalid configuration: tls_cert_file and tls_key_file go together")
    if settings.oidc_issuer is not None and settings.oidc_client_id is None:
        raise ConfigError("invalid configuration: oidc_issuer needs oidc_client_id")
    for proxy in settings.trusted_proxies:
        try:
            ipaddress.ip_address(proxy)
        except ValueError:
            raise ConfigError(
                f"invalid configuration: trusted_proxies: {proxy!r} is not an IP address"
            ) from None
    return settings


_SECRETS = frozenset({"oidc_client_secret"})


def render(settings: Settings) -> str:
    """TOML-ish ``key = value`` lines (secrets and the database password are masked)."""
    lines = []
    for name, value in msgspec.structs.asdict(settings).items():
        shown = (
            _mask_password(value) if name == "database_url" and isinstance(value, str) else value
        )
        if name in _SECRETS and value is not None:
            shown = "***"
        lines.append(f"{name} = {msgspec.json.encode(shown).decode()}")
    return "\n".join(lines)


def _mask_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
