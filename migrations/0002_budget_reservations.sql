-- Team budgets: the worst-case cost of each request in flight on any daemon, held against
-- its project's budget until the request's line is in chatcache_ledger (the shipper
-- deletes the row in the transaction that inserts the line) or, for a daemon that died,
-- until expires_at: an expired row no longer counts.
CREATE TABLE chatcache_reservations (
    id         text PRIMARY KEY,
    project    text NOT NULL,
    daemon     text NOT NULL,
    amount     double precision NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX chatcache_reservations_project ON chatcache_reservations (project, expires_at);
