-- Accounts, login sessions and their tokens, MFA recovery codes, API keys, login throttles
-- and the audit log (issue 5). Secrets are never stored: passwords as argon2id hashes,
-- tokens, device ids, recovery codes and API keys as SHA-256 of high-entropy random values.

CREATE TABLE accounts (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- normalised (server/domains/accounts/rules.py); null for a guest (device) account
    email               text UNIQUE CHECK (email IS NULL OR length(email) BETWEEN 3 AND 254),
    password_hash       text,
    device_hash         bytea UNIQUE,
    display_name        text,
    display_name_key    text UNIQUE,  -- casefolded display_name: names are unique ignoring case
    locale              text        NOT NULL DEFAULT 'en',
    avatar_url          text,
    notification_prefs  jsonb       NOT NULL DEFAULT '{}',
    roles               text[]      NOT NULL DEFAULT '{player}',
    banned_at           timestamptz,
    ban_reason          text,
    mfa_secret          text,        -- base32 TOTP secret, set at enrolment
    mfa_enabled         boolean     NOT NULL DEFAULT false,
    mfa_last_step       bigint      NOT NULL DEFAULT 0,  -- last accepted TOTP step: no replay
    player_id           bigint      NOT NULL UNIQUE REFERENCES players (id),
    created_at          timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz,
    CHECK (email IS NOT NULL OR device_hash IS NOT NULL OR password_hash IS NULL)
);

-- One login on one device: the family of every refresh token rotated from its first one.
CREATE TABLE auth_sessions (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id     bigint      NOT NULL REFERENCES accounts (id),
    method         text        NOT NULL,  -- password | device | oidc
    ip             text        NOT NULL DEFAULT '',
    user_agent     text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,  -- no refresh after this, whatever the rotations
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX auth_sessions_account ON auth_sessions (account_id) WHERE revoked_at IS NULL;

CREATE TABLE auth_tokens (
    token_hash bytea       PRIMARY KEY,
    session_id bigint      NOT NULL REFERENCES auth_sessions (id),
    kind       text        NOT NULL CHECK (kind IN ('access', 'refresh')),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz  -- a refresh token that was rotated; presenting it again is reuse
);
CREATE INDEX auth_tokens_session ON auth_tokens (session_id);

CREATE TABLE mfa_recovery_codes (
    account_id bigint NOT NULL REFERENCES accounts (id),
    code_hash  bytea  NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (account_id, code_hash)
);

CREATE TABLE api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    key_hash     bytea       NOT NULL UNIQUE,
    permissions  text[]      NOT NULL,
    created_by   bigint      REFERENCES accounts (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

-- Failed logins per key ("account:<id>", "email:<normalised>", "ip:<address>"): shared by
-- every node, so a lockout holds whichever node the next attempt reaches.
CREATE TABLE login_throttles (
    key          text        PRIMARY KEY,
    failures     integer     NOT NULL,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Security-relevant events. Append-only: updates and deletes are refused by trigger.
CREATE TABLE audit_log (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                timestamptz NOT NULL DEFAULT now(),
    action            text        NOT NULL,
    actor_account_id  bigint,
    actor_api_key_id  bigint,
    target_account_id bigint,
    ip                text        NOT NULL DEFAULT '',
    details           jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_action ON audit_log (action, id);
CREATE INDEX audit_log_actor ON audit_log (actor_account_id, id);
CREATE INDEX audit_log_target ON audit_log (target_account_id, id);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- External identities (OpenID Connect): one (issuer, subject) belongs to one account.
CREATE TABLE oidc_identities (
    issuer     text        NOT NULL,
    subject    text        NOT NULL,
    account_id bigint      NOT NULL REFERENCES accounts (id),
    email      text,
    linked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, subject)
);

-- Authorization-code flows in progress: created by oidc start, consumed once by the callback.
CREATE TABLE oidc_flows (
    state_hash      bytea       PRIMARY KEY,
    code_verifier   text        NOT NULL,
    nonce           text        NOT NULL,
    redirect_uri    text        NOT NULL,
    link_account_id bigint REFERENCES accounts (id),  -- set when linking to a signed-in account
    expires_at      timestamptz NOT NULL
);
