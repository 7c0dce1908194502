-- Players: identity for the simulation. Accounts (a later issue) will reference this table.
CREATE TABLE players (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Item ids are allocated in blocks (hi/lo): one nextval hands a node 1000 ids, so item
-- creation never waits on Postgres per item and ids stay unique across nodes.
CREATE SEQUENCE item_id_blocks START WITH 1;
