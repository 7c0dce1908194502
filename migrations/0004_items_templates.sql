-- Item templates: every validated catalog a node has run, kept whole, and which one is
-- active, so every node runs the same data (the file on one machine is not the source of
-- truth). A version is identified by the SHA-256 of its TOML text: loading the same text
-- again finds the same row. Versions are never deleted: journal effects and snapshots made
-- under an old catalog stay explainable.
CREATE TABLE catalog_versions (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    digest    text        NOT NULL UNIQUE CHECK (digest ~ '^[0-9a-f]{64}$'),
    toml      text        NOT NULL,  -- the validated source; servers parse exactly this
    origin    text        NOT NULL,  -- where it was loaded from (a file path)
    loaded_at timestamptz NOT NULL DEFAULT now(),
    loaded_by text        NOT NULL
);

-- One row per template of a version (msgspec JSON of sim.templates.ItemTemplate), for
-- queries and tools; servers read `toml`, which also holds compartments, skills and kits.
CREATE TABLE item_templates (
    catalog_id  bigint NOT NULL REFERENCES catalog_versions (id),
    template_id text   NOT NULL,
    data        jsonb  NOT NULL,
    PRIMARY KEY (catalog_id, template_id)
);

-- The active version: at most one row (the key can only be true).
CREATE TABLE active_catalog (
    singleton    boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    catalog_id   bigint      NOT NULL REFERENCES catalog_versions (id),
    activated_at timestamptz NOT NULL DEFAULT now()
);
