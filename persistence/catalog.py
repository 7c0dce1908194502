"""The item catalog in Postgres: validated versions, their templates, and the active one.

Every node runs the active catalog, so a designer's change reaches all of them through one
``gearhall templates load FILE`` (effective when a node starts). A version is stored whole
— its TOML text, parsed again on read, so the in-memory ``Catalog`` is exactly what the
validated file gave — plus one ``item_templates`` row per template for queries and tools.

Catalog writes serialise on an advisory lock, so two nodes starting at once on an empty
table agree on one version, and "store the shipped file if none is active" cannot undo an
operator's concurrent load.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import asyncpg
import msgspec

from sim.templates import Catalog, TemplateError, parse_templates

_LOCK_KEY = 0x6765_6172_6374  # "gearct": catalog writes; distinct from the migration lock
_encode_json = msgspec.json.Encoder()


class StoredCatalog(NamedTuple):
    """A catalog version as stored: its id, whether this call created it, and the catalog."""

    catalog_id: int
    created: bool
    catalog: Catalog


def read_catalog_file(path: Path) -> str:
    """The text of a catalog file.

    Raises:
        TemplateError: the file cannot be read (the message names it).
    """
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read: {exc.strerror}") from None


async def store_catalog(
    conn: asyncpg.Connection, text: str, source: str, loaded_by: str
) -> StoredCatalog:
    """Validate ``text``, store it as a catalog version (if new) and make it active.

    Loading text already stored (same digest) writes no new version: it re-activates the
    existing one, and ``created`` is False. ``source`` names the text in error messages and
    is recorded as the version's origin.

    Raises:
        TemplateError: the text is not a valid catalog; nothing was written.
    """
    catalog = parse_templates(text, source)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        return await _store_and_activate(conn, catalog, text, source, loaded_by)


async def active_or_store(
    conn: asyncpg.Connection, text: str, source: str, loaded_by: str
) -> StoredCatalog:
    """The active catalog; when there is none yet, ``text`` stored and activated.

    Raises:
        TemplateError: ``text`` is needed and invalid, or the stored active version no longer
            parses (a parser made stricter since it was loaded).
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        found = await _active(conn)
        if found is not None:
            return found
        catalog = parse_templates(text, source)
        return await _store_and_activate(conn, catalog, text, source, loaded_by)


async def active_catalog(conn: asyncpg.Connection) -> Catalog | None:
    """The active catalog, parsed from its stored text; None if none was ever stored.

    Raises:
        TemplateError: the stored version no longer parses, or its text does not match its
            digest (edited in the database).
    """
    found = await _active(conn)
    return None if found is None else found.catalog


async def _active(conn: asyncpg.Connection) -> StoredCatalog | None:
    row = await conn.fetchrow(
        """
        SELECT v.id, v.digest, v.toml, v.origin
        FROM active_catalog a JOIN catalog_versions v ON v.id = a.catalog_id
        """
    )
    if row is None:
        return None
    source = f"catalog #{row['id']} ({row['origin']})"
    catalog = parse_templates(row["toml"], source)
    if catalog.digest != row["digest"]:
        raise TemplateError(f"{source}: stored text does not match its digest")
    return StoredCatalog(int(row["id"]), False, catalog)


async def _store_and_activate(
    conn: asyncpg.Connection, catalog: Catalog, text: str, source: str, loaded_by: str
) -> StoredCatalog:
    # Under the lock no other writer can insert this digest meanwhile.
    catalog_id = await conn.fetchval(
        "SELECT id FROM catalog_versions WHERE digest = $1", catalog.digest
    )
    created = catalog_id is None
    if created:
        catalog_id = await conn.fetchval(
            """
            INSERT INTO catalog_versions (digest, toml, origin, loaded_by)
            VALUES ($1, $2, $3, $4) RETURNING id
            """,
            catalog.digest,
            text,
            source,
            loaded_by,
        )
        await conn.execute(
            """
            INSERT INTO item_templates (catalog_id, template_id, data)
            SELECT $1, t, d::jsonb FROM unnest($2::text[], $3::text[]) AS u(t, d)
            """,
            catalog_id,
            list(catalog.templates),
            [_encode_json.encode(tpl).decode() for tpl in catalog.templates.values()],
        )
    await conn.execute(
        """
        INSERT INTO active_catalog (singleton, catalog_id) VALUES (true, $1)
        ON CONFLICT (singleton) DO UPDATE
            SET catalog_id = EXCLUDED.catalog_id, activated_at = now()
        """,
        catalog_id,
    )
    return StoredCatalog(int(catalog_id), created, catalog)
