-- 0003_money_out: staff roles, revenue-share rules, daily settlements, creator
-- verification (KYC) and payout methods (encrypted), withdrawals, sandbox payouts.
--
-- Money rules the database enforces here:
--   * one settlement per (creator, local day) and one 'settlement' journal entry
--     per (creator, day): re-running settlement cannot book twice;
--   * gross = creator share + platform share, on every settlement row;
--   * a withdrawal's freeze, its release (reject / failed payout) and its payout
--     are journal entries unique on (kind, ref = withdrawal id): a duplicated
--     notify or a double approval cannot pay twice;
--   * ciphertexts only: real names, ID numbers and payout accounts are stored
--     AES-GCM encrypted (billing/crypto.py) plus a masked form for display.

ALTER TABLE users DROP CONSTRAINT users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN (
    'viewer', 'streamer', 'admin', 'finance', 'ops', 'support'));

-- New accounts per creator:
--   'creator_earnings:<uid>' settled net income (pending until T+N, then available);
--   'creator_frozen:<uid>'   coins frozen by withdrawals that are requested or approved;
-- and one sink: 'withdrawals_paid' (coins paid out as money to creators).
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind IN (
    'wallet', 'creator_pending', 'promotion', 'channel_clearing', 'platform_revenue',
    'refunds', 'adjustments', 'creator_earnings', 'creator_frozen', 'withdrawals_paid'));
INSERT INTO accounts (code, kind) VALUES ('withdrawals_paid', 'withdrawals_paid');

ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check CHECK (kind IN (
    'gift', 'grant', 'recharge', 'refund', 'adjustment',
    'settlement', 'withdrawal_freeze', 'withdrawal_release', 'withdrawal_payout'));

-- Revenue-share rules, append-only: a change is a new row with a later
-- effective_from. creator_id NULL: the platform default. tiers: JSON array of
-- [from_coins, creator_bps] sorted by from_coins, the first from 0 (a fixed
-- rule is one tier). Tiers are marginal over the creator's gift income of the
-- local calendar month (billing/revenue.py).
CREATE TABLE revenue_rules (
    id             bigserial PRIMARY KEY,
    creator_id     bigint REFERENCES users (id),
    effective_from date NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('fixed', 'tiered')),
    tiers          jsonb NOT NULL,
    hold_days      int CHECK (hold_days BETWEEN 0 AND 90),  -- T+N; NULL: the setting
    reason         text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    created_by     bigint NOT NULL REFERENCES users (id),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revenue_rules_lookup ON revenue_rules (creator_id, effective_from DESC, id DESC);
CREATE TRIGGER revenue_rules_append_only BEFORE UPDATE OR DELETE ON revenue_rules
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE TABLE settlements (
    creator_id     bigint NOT NULL REFERENCES users (id),
    day            date NOT NULL,            -- local day in GIFTD_TIMEZONE
    gross_coins    bigint NOT NULL CHECK (gross_coins > 0),
    creator_coins  bigint NOT NULL CHECK (creator_coins >= 0),
    platform_coins bigint NOT NULL CHECK (platform_coins >= 0),
    month_before_coins bigint NOT NULL CHECK (month_before_coins >= 0),  -- tier position
    gift_count     int NOT NULL,
    rule_id        bigint REFERENCES revenue_rules (id),  -- NULL: the built-in default
    rule           jsonb NOT NULL,            -- the rule as applied (kind, tiers, hold_days)
    hold_days      int NOT NULL,
    available_on   date NOT NULL,             -- withdrawable from local midnight of this day
    entry_id       bigint NOT NULL REFERENCES journal_entries (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (creator_id, day),
    CHECK (creator_coins + platform_coins = gross_coins)
);
CREATE INDEX settlements_day ON settlements (day);
CREATE INDEX settlements_available ON settlements (creator_id, available_on);
CREATE TRIGGER settlements_append_only BEFORE UPDATE OR DELETE ON settlements
    FOR EACH ROW EXECUTE FUNCTION refuse_change();

CREATE INDEX gift_events_created ON gift_events (created_at);

CREATE TABLE creator_kyc (
    creator_id     bigint PRIMARY KEY REFERENCES users (id),
    name_enc       bytea NOT NULL,
    id_number_enc  bytea NOT NULL,
    name_masked    text NOT NULL,
    id_masked      text NOT NULL,
    status         text NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    reason         text,
    reviewed_by    bigint REFERENCES users (id),
    submitted_at   timestamptz NOT NULL DEFAULT now(),
    reviewed_at    timestamptz
);
CREATE INDEX creator_kyc_status ON creator_kyc (status, submitted_at);

CREATE TABLE payout_methods (
    id          bigserial PRIMARY KEY,
    creator_id  bigint NOT NULL REFERENCES users (id),
    kind        text NOT NULL CHECK (kind IN ('bank_card', 'alipay', 'wechat')),
    account_enc bytea NOT NULL,
    masked      text NOT NULL,
    bank        text,                -- bank name for cards (not secret)
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payout_methods_creator ON payout_methods (creator_id) WHERE active;

CREATE TABLE withdrawals (
    id           text PRIMARY KEY CHECK (id ~ '^W[0-9A-Za-z]{20,40}$'),
    creator_id   bigint NOT NULL REFERENCES users (id),
    method_id    bigint NOT NULL REFERENCES payout_methods (id),
    amount_coins bigint NOT NULL CHECK (amount_coins > 0),
    amount_fen   bigint NOT NULL CHECK (amount_fen >= 0),
    status       text NOT NULL CHECK (status IN ('REQUESTED', 'APPROVED', 'PAID', 'FAILED',
                                                 'REJECTED')),
    idem_key     text NOT NULL CHECK (length(idem_key) BETWEEN 1 AND 64),
    request_fp   text NOT NULL,
    reason       text,                -- the reviewer's reason / the channel's failure
    reviewed_by  bigint REFERENCES users (id),
    reviewed_at  timestamptz,
    channel      text,
    payout_no    text,                -- the channel's id for the payout
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    done_at      timestamptz,
    UNIQUE (creator_id, idem_key)
);
CREATE INDEX withdrawals_creator ON withdrawals (creator_id, created_at DESC);
CREATE INDEX withdrawals_status ON withdrawals (status, created_at);

-- Every withdrawal state change, and every refused one.
CREATE TABLE withdrawal_events (
    id            bigserial PRIMARY KEY,
    withdrawal_id text NOT NULL,
    from_state    text,
    to_state      text NOT NULL,
    accepted      boolean NOT NULL,
    source        text NOT NULL,   -- api | review | notify:<channel> | sweep
    detail        text,
    at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX withdrawal_events_w ON withdrawal_events (withdrawal_id, id);

-- The sandbox channel's payout books (its side, like sandbox_trades).
CREATE TABLE sandbox_payouts (
    payout_no      text PRIMARY KEY,
    out_payout_no  text NOT NULL UNIQUE,
    amount_fen     bigint NOT NULL CHECK (amount_fen >= 0),
    method         text NOT NULL,
    account_masked text NOT NULL,
    status         text NOT NULL CHECK (status IN ('PAID', 'FAILED')),
    notify_url     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    notified_ok_at timestamptz,
    attempts       int NOT NULL DEFAULT 0,
    next_notify_at timestamptz
);
CREATE INDEX sandbox_payouts_notify ON sandbox_payouts (next_notify_at)
    WHERE notified_ok_at IS NULL;
