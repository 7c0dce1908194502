-- Checkpoints: a player's whole state (msgspec MessagePack) at a version. Recovery is the
-- latest snapshot plus that player's journal rows above it.
CREATE TABLE snapshots (
    player_id bigint      PRIMARY KEY REFERENCES players (id),
    version   bigint      NOT NULL CHECK (version >= 0),
    state     bytea       NOT NULL,
    taken_at  timestamptz NOT NULL DEFAULT now()
);
