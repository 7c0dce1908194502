"""Postgres: the pool, migrations, the journal, snapshots and per-domain repositories.

What lives here: everything that speaks SQL, and the embedded Postgres bootstrap. Code here
imports ``protocol`` and ``sim`` value types, never ``server``. asyncpg errors are
translated by class, never by message text.
"""
