CREATE TABLE firedrill.drills (
    report text PRIMARY KEY,
    source text NOT NULL,
    backup_id text NOT NULL,
    started timestamptz NOT NULL,
    finished timestamptz NOT NULL,
    passed boolean NOT NULL,
    rto_seconds double precision NOT NULL,
    rpo_seconds bigint NOT NULL,
    failed_checks integer NOT NULL,
    error text,
    body jsonb NOT NULL
);
CREATE INDEX drills_backup ON firedrill.drills (source, backup_id);
