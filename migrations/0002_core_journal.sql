-- The redo log: one row per effect, keyed by (player, version). The primary key is also
-- the guard that a player's version can never be written twice.
CREATE TABLE journal (
    player_id    bigint      NOT NULL REFERENCES players (id),
    version      bigint      NOT NULL CHECK (version > 0),
    tick         bigint      NOT NULL,
    effect       bytea       NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (player_id, version)
);
