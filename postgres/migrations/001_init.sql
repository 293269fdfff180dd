-- Times are Unix seconds (0 = not set), as in the SQLite store.
-- id and name use the "C" collation: byte order, so that ORDER BY name,
-- keyset pagination by id and name-prefix ranges behave exactly as in SQLite
-- whatever the database's default collation is.
CREATE TABLE sandboxes (
    id                    TEXT COLLATE "C" PRIMARY KEY,
    name                  TEXT COLLATE "C" NOT NULL,
    external_id           TEXT NOT NULL DEFAULT '',
    sfdc_account_id       TEXT NOT NULL DEFAULT '',
    status                TEXT NOT NULL,
    owner                 TEXT NOT NULL DEFAULT '',
    track_name            TEXT NOT NULL DEFAULT '',
    idem_key              TEXT NOT NULL DEFAULT '',
    allocated_at          BIGINT NOT NULL DEFAULT 0,
    lab_duration_sec      BIGINT NOT NULL DEFAULT 0,
    expires_at            BIGINT NOT NULL DEFAULT 0,
    deletion_requested_at BIGINT NOT NULL DEFAULT 0,
    deletion_attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt_at       BIGINT NOT NULL DEFAULT 0,
    lease_until           BIGINT NOT NULL DEFAULT 0,
    claim_token           TEXT NOT NULL DEFAULT '',
    last_error            TEXT NOT NULL DEFAULT '',
    created_at            BIGINT NOT NULL DEFAULT 0,
    updated_at            BIGINT NOT NULL DEFAULT 0,
    last_synced           BIGINT NOT NULL DEFAULT 0
) WITH (fillfactor = 80); -- room for HOT updates: every sync rewrites each available row

-- At most one allocated sandbox per (owner, idempotency key): the database
-- enforces idempotency, however many replicas race.
CREATE UNIQUE INDEX sandboxes_active_key ON sandboxes (owner, idem_key) WHERE status = 'allocated';
-- Allocation picks the first available sandbox by name; prefix ranges
-- (name >= prefix AND name < upper bound) use it too. It must be the only
-- index in name order: a full one would let the planner walk past every
-- allocated sandbox, which cluster at the start of the name order.
CREATE INDEX sandboxes_available_name ON sandboxes (name) WHERE status = 'available';
CREATE INDEX sandboxes_status_id ON sandboxes (status, id);
-- The admin list's name-prefix filter, written with the byte-wise operators
-- ~>=~ and ~<~ of text_pattern_ops: an index that cannot serve ORDER BY name.
CREATE INDEX sandboxes_name_pattern ON sandboxes (name text_pattern_ops);
-- "expires_at > 0" keeps the planner from using this index for the
-- idempotency lookup (owner, key, status = 'allocated'), which must use
-- sandboxes_active_key: with statistics taken while few sandboxes were
-- allocated it otherwise filtered every allocated row.
CREATE INDEX sandboxes_expiry ON sandboxes (expires_at) WHERE status = 'allocated' AND expires_at > 0;
CREATE INDEX sandboxes_due ON sandboxes (next_attempt_at) WHERE status = 'pending_deletion';
CREATE INDEX sandboxes_lease ON sandboxes (lease_until) WHERE status = 'deleting';
CREATE INDEX sandboxes_track ON sandboxes (track_name, id) WHERE track_name <> '';
CREATE INDEX sandboxes_owner ON sandboxes (owner, id) WHERE owner <> '';
-- No index on updated_at (unlike SQLite's sandboxes_stale): it would make
-- every sync refresh a non-HOT update. PurgeStale finds the few stale rows
-- through sandboxes_status_id.

CREATE TABLE events (
    seq         BIGSERIAL PRIMARY KEY,
    sandbox_id  TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status   TEXT NOT NULL,
    actor       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX events_sandbox ON events (sandbox_id, seq);

CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  BIGINT NOT NULL
);

CREATE TABLE job_settings (
    job    TEXT PRIMARY KEY,
    paused BOOLEAN NOT NULL
);

CREATE TABLE job_runs (
    id          TEXT COLLATE "C" PRIMARY KEY,
    job         TEXT NOT NULL,
    status      TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    queued_at   BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    result      TEXT NOT NULL
);
CREATE INDEX job_runs_job ON job_runs (job, queued_at);
CREATE INDEX job_runs_queued ON job_runs (job, queued_at) WHERE status = 'queued';
