-- The team ledger: every line of every daemon's local ledger, exactly once.
-- line_hash is the blake3 of the line's bytes in its daemon's ledger file: the same line
-- sent again (a batch repeated after a crash or a lost cursor) is the same row.
CREATE TABLE chatcache_ledger (
    line_hash     bytea PRIMARY KEY,
    daemon        text NOT NULL,
    id            text NOT NULL,
    ts            timestamptz NOT NULL,
    project       text NOT NULL,
    key           text,
    endpoint      text NOT NULL,
    model         text,
    stream        boolean NOT NULL,
    outcome       text NOT NULL,
    status        integer NOT NULL,
    input_tokens  bigint,
    output_tokens bigint,
    input_cost    numeric,
    output_cost   numeric,
    cost          numeric,
    saved         numeric,
    cost_source   text NOT NULL,
    upstream_ms   bigint,
    ttfb_ms       bigint,
    incomplete    boolean NOT NULL,
    shipped_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX chatcache_ledger_ts ON chatcache_ledger (ts);
CREATE INDEX chatcache_ledger_project_ts ON chatcache_ledger (project, ts);
