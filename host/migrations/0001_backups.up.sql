CREATE TABLE firedrill.backups (
    source text NOT NULL,
    id text NOT NULL,
    kind text NOT NULL,
    created timestamptz NOT NULL,
    size_bytes bigint NOT NULL,
    tables integer NOT NULL,
    seconds double precision,
    encrypted boolean NOT NULL,
    signed boolean NOT NULL,
    synced timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, id)
);
