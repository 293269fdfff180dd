CREATE TABLE sandboxes (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    external_id           TEXT NOT NULL DEFAULT '',
    sfdc_account_id       TEXT NOT NULL DEFAULT '',
    status                TEXT NOT NULL,
    owner                 TEXT NOT NULL DEFAULT '',
    track_name            TEXT NOT NULL DEFAULT '',
    idem_key              TEXT NOT NULL DEFAULT '',
    allocated_at          INTEGER NOT NULL DEFAULT 0,
    lab_duration_sec      INTEGER NOT NULL DEFAULT 0,
    expires_at            INTEGER NOT NULL DEFAULT 0,
    deletion_requested_at INTEGER NOT NULL DEFAULT 0,
    deletion_attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt_at       INTEGER NOT NULL DEFAULT 0,
    lease_until           INTEGER NOT NULL DEFAULT 0,
    claim_token           TEXT NOT NULL DEFAULT '',
    last_error            TEXT NOT NULL DEFAULT '',
    created_at            INTEGER NOT NULL DEFAULT 0,
    updated_at            INTEGER NOT NULL DEFAULT 0,
    last_synced           INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- At most one allocated sandbox per (owner, idempotency key).
CREATE UNIQUE INDEX sandboxes_active_key ON sandboxes (owner, idem_key) WHERE status = 'allocated';
-- Allocation picks the first available sandbox by name: prefix ranges use it too.
CREATE INDEX sandboxes_available_name ON sandboxes (name) WHERE status = 'available';
CREATE INDEX sandboxes_status_id ON sandboxes (status, id);
CREATE INDEX sandboxes_name ON sandboxes (name, id);
CREATE INDEX sandboxes_expiry ON sandboxes (expires_at) WHERE status = 'allocated';
CREATE INDEX sandboxes_due ON sandboxes (next_attempt_at) WHERE status = 'pending_deletion';
CREATE INDEX sandboxes_lease ON sandboxes (lease_until) WHERE status = 'deleting';
CREATE INDEX sandboxes_stale ON sandboxes (updated_at) WHERE status = 'stale';
CREATE INDEX sandboxes_track ON sandboxes (track_name, id) WHERE track_name <> '';
CREATE INDEX sandboxes_owner ON sandboxes (owner, id) WHERE owner <> '';

CREATE TABLE events (
    seq         INTEGER PRIMARY KEY, -- rowid: no AUTOINCREMENT bookkeeping write per event
    sandbox_id  TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status   TEXT NOT NULL,
    actor       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX events_sandbox ON events (sandbox_id, seq);

CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until  INTEGER NOT NULL
);

CREATE TABLE job_settings (
    job    TEXT PRIMARY KEY,
    paused INTEGER NOT NULL
);

CREATE TABLE job_runs (
    id          TEXT PRIMARY KEY,
    job         TEXT NOT NULL,
    status      TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    queued_at   INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER NOT NULL,
    result      TEXT NOT NULL
);
CREATE INDEX job_runs_job ON job_runs (job, queued_at);
CREATE INDEX job_runs_queued ON job_runs (job, queued_at) WHERE status = 'queued';
