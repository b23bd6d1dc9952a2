-- 0002_money_in: recharge orders, payment notifies, refunds, wallet debits,
-- manual adjustments, the sandbox channel's own books, the hash-chained audit log.
--
-- Money rules the database enforces here:
--   * yuan amounts are bigint fen, coin amounts bigint coins; never floats;
--   * one order -> at most one recharge journal entry (journal_entries (kind, ref))
--     and one credit_outbox row (op_id 'recharge:<order>'): a paid notify that
--     arrives 20 times credits once because of these constraints, not a cache;
--   * one first-recharge bonus per user (first_recharge_bonus primary key);
--   * a refund never exceeds what is left of its order (CHECK on refunded_fen);
--   * the audit log is append-only (no UPDATE, DELETE, TRUNCATE).

-- The chart of accounts grows: 'refunds' (coins given back to the channel:
-- a contra account of channel_clearing) and 'adjustments' (manual corrections
-- by an admin). Both are coin sources/sinks like promotion and channel_clearing.
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind IN (
    'wallet', 'creator_pending', 'promotion', 'channel_clearing', 'platform_revenue',
    'refunds', 'adjustments'));
INSERT INTO accounts (code, kind) VALUES ('refunds', 'refunds'), ('adjustments', 'adjustments');

CREATE TABLE recharge_orders (
    id               text PRIMARY KEY CHECK (id ~ '^R[0-9A-Za-z]{20,40}$'),  -- unguessable
    user_id          bigint NOT NULL REFERENCES users (id),
    channel          text NOT NULL CHECK (channel ~ '^[a-z0-9_]{1,32}$'),
    amount_fen       bigint NOT NULL CHECK (amount_fen > 0),
    coins            bigint NOT NULL CHECK (coins > 0),   -- bought at the order's rate
    bonus_coins      bigint NOT NULL DEFAULT 0 CHECK (bonus_coins >= 0),  -- set when paid
    status           text NOT NULL CHECK (status IN ('PENDING', 'SUCCESS', 'FAILED',
                                                     'CLOSED', 'REFUNDED')),
    refunded_fen     bigint NOT NULL DEFAULT 0,
    idem_key         text NOT NULL CHECK (length(idem_key) BETWEEN 1 AND 64),
    request_fp       text NOT NULL,   -- fingerprint of the request body the key came with
    channel_trade_no text,            -- the channel's id for the payment
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    paid_at          timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, idem_key),
    CHECK (refunded_fen >= 0 AND refunded_fen <= amount_fen),
    CHECK ((status IN ('SUCCESS', 'REFUNDED')) = (paid_at IS NOT NULL))
);
CREATE UNIQUE INDEX recharge_orders_trade ON recharge_orders (channel, channel_trade_no)
    WHERE channel_trade_no IS NOT NULL;
CREATE INDEX recharge_orders_pending ON recharge_orders (created_at) WHERE status = 'PENDING';
CREATE INDEX recharge_orders_paid ON recharge_orders (paid_at) WHERE paid_at IS NOT NULL;
CREATE INDEX recharge_orders_user ON recharge_orders (user_id, created_at DESC);

-- Every state change of an order, and every refused one.
CREATE TABLE order_events (
    id         bigserial PRIMARY KEY,
    order_id   text NOT NULL,
    from_state text,
    to_state   text NOT NULL,
    accepted   boolean NOT NULL,
    source     text NOT NULL,   -- notify:<channel> | query | expiry | refund | api
    detail     text,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX order_events_order ON order_events (order_id, id);

CREATE TABLE first_recharge_bonus (
    user_id  bigint PRIMARY KEY REFERENCES users (id),
    order_id text NOT NULL UNIQUE REFERENCES recharge_orders (id)
);

-- Every notify we received, accepted or not (bodies are not kept: they may be huge or hostile).
CREATE TABLE payment_notifies (
    id          bigserial PRIMARY KEY,
    channel     text NOT NULL,
    order_id    text,
    verdict     text NOT NULL,   -- credited | already | rejected:<reason> | ignored:<reason>
    body_bytes  int NOT NULL,
    body_sha256 text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_notifies_order ON payment_notifies (order_id) WHERE order_id IS NOT NULL;

-- Coins taken out of a Redis wallet for a refund or a negative adjustment.
-- Written 'pending' before the Redis debit, 'done' in the transaction that
-- journals it, 'refused' when Redis said the coins are gone. A crash between
-- the steps leaves 'pending'; resume_debits finishes it (the debit script is
-- keyed by op_id, so retrying never debits twice).
CREATE TABLE wallet_debits (
    op_id      text PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES users (id),
    amount     bigint NOT NULL CHECK (amount > 0),
    kind       text NOT NULL CHECK (kind IN ('refund', 'adjustment')),
    status     text NOT NULL CHECK (status IN ('pending', 'done', 'refused')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wallet_debits_pending ON wallet_debits (created_at) WHERE status = 'pending';

CREATE TABLE refunds (
    id           text PRIMARY KEY,            -- 'F' + random
    order_id     text NOT NULL REFERENCES recharge_orders (id),
    amount_fen   bigint NOT NULL CHECK (amount_fen > 0),
    coins        bigint NOT NULL CHECK (coins > 0),        -- bought coins taken back
    bonus_coins  bigint NOT NULL CHECK (bonus_coins >= 0), -- bonus coins taken back
    status       text NOT NULL CHECK (status IN ('pending', 'done', 'refused')),
    reason       text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    requested_by bigint NOT NULL REFERENCES users (id),
    idem_key     text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    done_at      timestamptz
);
CREATE INDEX refunds_order ON refunds (order_id);
CREATE INDEX refunds_done ON refunds (done_at) WHERE done_at IS NOT NULL;

CREATE TABLE adjustments (
    id           text PRIMARY KEY,            -- 'A' + random, or the admin's idempotency key
    user_id      bigint NOT NULL REFERENCES users (id),
    amount       bigint NOT NULL CHECK (amount <> 0),  -- coins, + credit, - debit
    status       text NOT NULL CHECK (status IN ('pending', 'done', 'refused')),
    reason       text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    requested_by bigint NOT NULL REFERENCES users (id),
    idem_key     text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The sandbox channel's own books: what a real channel keeps on its side.
-- Reconciliation reads the statement file made from these, never our orders.
CREATE TABLE sandbox_trades (
    trade_no       text PRIMARY KEY,
    out_trade_no   text NOT NULL UNIQUE,
    amount_fen     bigint NOT NULL CHECK (amount_fen > 0),
    status         text NOT NULL CHECK (status IN ('WAIT_PAY', 'PAID', 'CLOSED')),
    notify_url     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    paid_at        timestamptz,
    notified_ok_at timestamptz,
    attempts       int NOT NULL DEFAULT 0,
    next_notify_at timestamptz
);
CREATE INDEX sandbox_trades_notify ON sandbox_trades (next_notify_at)
    WHERE status = 'PAID' AND notified_ok_at IS NULL;

CREATE TABLE sandbox_refunds (
    refund_no    text PRIMARY KEY,
    trade_no     text NOT NULL REFERENCES sandbox_trades (trade_no),
    out_refund_no text NOT NULL UNIQUE,
    amount_fen   bigint NOT NULL CHECK (amount_fen > 0),
    refunded_at  timestamptz NOT NULL DEFAULT now()
);

-- The audit log: append-only and hash-chained. hash = sha256(prev_hash + the
-- record's canonical JSON), computed in billing/audit.py; `giftd audit verify`
-- recomputes the chain. Writers take an advisory lock so the chain is linear.
CREATE TABLE audit_log (
    seq        bigint PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor_id   bigint,
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL,
    reason     text NOT NULL,
    detail     text NOT NULL,   -- canonical JSON
    prev_hash  text NOT NULL,
    hash       text NOT NULL UNIQUE
);
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION refuse_change();
