-- 0001_core: users, rooms, the gift catalog, the double-entry journal, gift events.
--
-- Money rules the database itself enforces:
--   * amounts are bigint minor units (coins), never floats;
--   * every journal entry's postings sum to zero (statement trigger below);
--   * journal entries and postings are append-only (no UPDATE, DELETE, TRUNCATE);
--   * one gift event id -> at most one gift_events row and one journal entry.

CREATE TABLE users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL UNIQUE CHECK (username ~ '^[a-z0-9_]{3,32}$'),
    display_name  text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 64),
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('viewer', 'streamer', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rooms (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9_-]{1,40}$'),
    streamer_id bigint NOT NULL UNIQUE REFERENCES users (id),
    title       text NOT NULL CHECK (length(title) BETWEEN 1 AND 120),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gifts (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z0-9_]{1,32}$'),
    name        text NOT NULL,
    price_coins bigint NOT NULL CHECK (price_coins >= 1),
    animation   text NOT NULL,
    kind        text NOT NULL DEFAULT 'gift' CHECK (kind IN ('gift', 'tip')),
    sort_order  int NOT NULL DEFAULT 0,
    active      boolean NOT NULL DEFAULT true
);

-- The chart of accounts. Codes: 'wallet:<user>', 'creator_pending:<user>',
-- 'promotion' (coins given away: demo grants, bonuses), 'channel_clearing'
-- (money in from payment channels). Sign convention: an account's balance is
-- the sum of its postings; wallets and creator accounts are >= 0, sources of
-- coins (promotion, channel_clearing) run negative.
CREATE TABLE accounts (
    code     text PRIMARY KEY,
    kind     text NOT NULL CHECK (kind IN ('wallet', 'creator_pending', 'promotion',
                                           'channel_clearing', 'platform_revenue')),
    owner_id bigint REFERENCES users (id)
);
INSERT INTO accounts (code, kind) VALUES ('promotion', 'promotion'),
                                         ('channel_clearing', 'channel_clearing'),
                                         ('platform_revenue', 'platform_revenue');

CREATE TABLE journal_entries (
    id         bigserial PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('gift', 'grant', 'recharge', 'refund', 'adjustment')),
    ref        text NOT NULL,  -- what made it: gift event id, grant id, order id
    created_at timestamptz NOT NULL DEFAULT now(),
    memo       text,
    UNIQUE (kind, ref)
);

CREATE TABLE postings (
    entry_id bigint NOT NULL REFERENCES journal_entries (id),
    account  text   NOT NULL REFERENCES accounts (code),
    amount   bigint NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (entry_id, account)
);
CREATE INDEX postings_account ON postings (account);

-- Every entry touched by a statement must sum to zero once the statement is
-- done. Postings are append-only, so balanced-after-every-statement means
-- balanced forever. A statement-level trigger checks a whole COPY-sized batch
-- in one query instead of one query per row.
CREATE FUNCTION postings_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad bigint;
BEGIN
    SELECT p.entry_id INTO bad
      FROM postings p
      JOIN (SELECT DISTINCT entry_id FROM new_rows) n USING (entry_id)
     GROUP BY p.entry_id
    HAVING sum(p.amount) <> 0
     LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'journal entry % does not sum to zero', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER postings_balanced
    AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION postings_balanced();

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_append_only BEFORE UPDATE OR DELETE ON journal_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER journal_no_truncate BEFORE TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();

-- One row per accepted gift, written by the flusher from the write-behind stream.
CREATE TABLE gift_events (
    event_id         text PRIMARY KEY,  -- the stream entry id, e.g. '1795569903064-0'
    client_id        text NOT NULL,
    sender_id        bigint NOT NULL,
    streamer_id      bigint NOT NULL,
    room_id          text NOT NULL,
    gift_code        text NOT NULL,
    count            int NOT NULL CHECK (count > 0),
    unit_price_coins bigint NOT NULL CHECK (unit_price_coins >= 0),
    amount_coins     bigint NOT NULL CHECK (amount_coins = count * unit_price_coins),
    created_at       timestamptz NOT NULL,
    flushed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gift_events_sender ON gift_events (sender_id, created_at DESC);
CREATE INDEX gift_events_streamer ON gift_events (streamer_id, created_at DESC);
CREATE TRIGGER gift_events_append_only BEFORE UPDATE OR DELETE ON gift_events
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

-- Credits decided in Postgres, applied to Redis balances afterwards. A row
-- stays unapplied until the idempotent credit script answered; a background
-- task retries unapplied rows, so a credit that could not reach Redis is
-- never lost and never applied twice (the script is keyed by op_id).
CREATE TABLE credit_outbox (
    op_id       text PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id),
    amount      bigint NOT NULL CHECK (amount > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    applied_at  timestamptz
);
CREATE INDEX credit_outbox_pending ON credit_outbox (created_at) WHERE applied_at IS NULL;

CREATE VIEW account_balances AS
    SELECT account, sum(amount)::bigint AS balance FROM postings GROUP BY account;
