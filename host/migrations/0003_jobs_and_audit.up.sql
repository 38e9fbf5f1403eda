CREATE TABLE firedrill.jobs (
    id text PRIMARY KEY,
    kind text NOT NULL,
    source text NOT NULL,
    trigger text NOT NULL,
    state text NOT NULL,
    created timestamptz NOT NULL,
    started timestamptz,
    finished timestamptz,
    backup_id text,
    passed boolean,
    error text,
    node text NOT NULL
);
CREATE TABLE firedrill.audit (
    seq bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    entry jsonb NOT NULL
);
