//! The PostgreSQL schema (as versioned migrations) and the statements the store runs.
//!
//! Every name column is `COLLATE "C"`: byte order, as the sled backend sorts, whatever the
//! database's collation.

/// Migrations, applied in order, each once, in one transaction (see `super::migrate`). Never edit
/// an applied migration: add the next version.
pub(crate) const MIGRATIONS: &[(i32, &str, &str)] = &[(1, "event store", V1)];

const V1: &str = r#"
CREATE SEQUENCE event_positions AS bigint MINVALUE 0 START WITH 0;

CREATE TABLE streams (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name    text COLLATE "C" NOT NULL UNIQUE,
    -- the version of the stream's last event (-1 only inside the transaction that creates it)
    version bigint NOT NULL,
    -- the transaction that appended the stream's last event
    last_tx xid8
);

-- One row per event. `payload` is the protobuf `outrider.v1.Event` with its stream and origin,
-- without version and position (the columns hold them). `local`: the event originated here, so
-- its origin_seq is its position. `tx_id`: the appending transaction, which orders the store.
CREATE TABLE events (
    position  bigint PRIMARY KEY,
    tx_id     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stream_id bigint NOT NULL,
    version   bigint NOT NULL,
    event_id  text COLLATE "C" NOT NULL,
    local     boolean NOT NULL,
    payload   bytea NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream_id, version),
    CONSTRAINT events_stream_event_id UNIQUE (stream_id, event_id)
);
-- The global order: (transaction id, position).
CREATE INDEX events_global_order ON events (tx_id, position);

CREATE TABLE snapshots (
    stream_id bigint PRIMARY KEY,
    version   bigint NOT NULL,
    payload   bytea NOT NULL,
    saved_at  timestamptz NOT NULL DEFAULT now()
);

-- Consumer checkpoints: the position of the last event a consumer processed.
CREATE TABLE checkpoints (
    name       text COLLATE "C" PRIMARY KEY,
    position   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Watermarks moved by compare-and-set with an append batch (the ingest's lanes).
CREATE TABLE watermarks (
    name  text COLLATE "C" PRIMARY KEY,
    value bigint NOT NULL
);

-- Consumer leases. Expiry is the database's clock (clock_timestamp()), the one clock every
-- replica shares. `token` grows each time the lease changes hands (fencing).
CREATE TABLE leases (
    consumer   text COLLATE "C" PRIMARY KEY,
    holder     text COLLATE "C" NOT NULL,
    token      bigint NOT NULL,
    expires_at timestamptz NOT NULL
);

-- Aborts the fast single-event append (see APPEND_ONE in sql.rs) when the event id is already
-- in the stream, so that its version move is undone.
CREATE FUNCTION outrider_fast_append_missed() RETURNS bigint LANGUAGE plpgsql AS $fn$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'OR001', MESSAGE = 'event id already in the stream';
END
$fn$;

-- One append: idempotency, expected version, placement. One round trip, no exception blocks
-- (so no subtransactions). status: 0 appended, 1 duplicate (positions/versions are the
-- originals), 2 wrong expected version (actual), 3 partial duplicate (dup_id).
-- p_kind: 0 any, 1 no stream, 2 stream exists, 3 exact p_expected.
CREATE FUNCTION outrider_append(
    p_stream text, p_kind smallint, p_expected bigint,
    p_ids text[], p_locals boolean[], p_payloads bytea[],
    OUT status smallint, OUT actual bigint, OUT positions bigint[], OUT versions bigint[],
    OUT dup_id text)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_sid  bigint;
    v_cur  bigint;
    v_last xid8;
    v_n    int := cardinality(p_ids);
    v_hits int;
    v_pos  bigint;
    v_ver  bigint;
BEGIN
    -- The stream row serialises appends to one stream (and only to it).
    --
    -- Fast path: an existing stream whose version admits the append and whose last append's
    -- transaction is not younger than this one is locked and moved by one UPDATE; the events
    -- then go in unless an id is already in the stream, in which case the move is undone and
    -- the retry answered below. Anything else takes the slow path after it.
    UPDATE streams s SET version = s.version + v_n, last_tx = pg_current_xact_id()
     WHERE s.name = p_stream AND s.version >= 0
       AND (p_kind = 0 OR p_kind = 2 OR (p_kind = 3 AND s.version = p_expected))
       AND (s.last_tx IS NULL OR s.last_tx <= pg_current_xact_id())
    RETURNING s.id, s.version - v_n INTO v_sid, v_cur;
    IF FOUND THEN
        IF v_n = 1 THEN
            INSERT INTO events (position, stream_id, version, event_id, local, payload)
            VALUES (nextval('event_positions'), v_sid, v_cur + 1, p_ids[1], p_locals[1],
                    p_payloads[1])
            ON CONFLICT (stream_id, event_id) DO NOTHING
            RETURNING position INTO v_pos;
            IF FOUND THEN
                status := 0;
                actual := v_cur + 1;
                positions := ARRAY[v_pos];
                versions := ARRAY[v_cur + 1];
                RETURN;
            END IF;
        ELSE
            SELECT count(*)::int INTO v_hits FROM events e
             WHERE e.stream_id = v_sid AND e.event_id = ANY (p_ids);
            IF v_hits = 0 THEN
                SELECT array_agg(g.p ORDER BY g.p) INTO positions
                  FROM (SELECT nextval('event_positions') AS p FROM generate_series(1, v_n)) g;
                SELECT array_agg(v_cur + i ORDER BY i) INTO versions
                  FROM generate_series(1, v_n) i;
                INSERT INTO events (position, stream_id, version, event_id, local, payload)
                SELECT positions[i], v_sid, v_cur + i, p_ids[i], p_locals[i], p_payloads[i]
                  FROM generate_series(1, v_n) i;
                status := 0;
                actual := v_cur + v_n;
                RETURN;
            END IF;
        END IF;
        -- An id is already there: undo the move (the row stays locked) and go the slow way.
        UPDATE streams SET version = v_cur,
               last_tx = (SELECT e.tx_id FROM events e
                           WHERE e.stream_id = v_sid AND e.version = v_cur)
         WHERE id = v_sid;
    END IF;

    -- Slow path: new streams, retries, refusals, transaction-order conflicts.
    SELECT s.id, s.version, s.last_tx INTO v_sid, v_cur, v_last
      FROM streams s WHERE s.name = p_stream FOR UPDATE;
    IF NOT FOUND THEN
        IF p_kind IN (2, 3) THEN
            status := 2;
            RETURN;
        END IF;
        INSERT INTO streams (name, version) VALUES (p_stream, -1) ON CONFLICT (name) DO NOTHING;
        SELECT s.id, s.version, s.last_tx INTO v_sid, v_cur, v_last
          FROM streams s WHERE s.name = p_stream FOR UPDATE;
    END IF;
    -- An idempotent retry: every id already in the stream.
    IF v_cur >= 0 AND v_n = 1 THEN
        SELECT e.position, e.version INTO v_pos, v_ver
          FROM events e WHERE e.stream_id = v_sid AND e.event_id = p_ids[1];
        IF FOUND THEN
            status := 1;
            actual := v_cur;
            positions := ARRAY[v_pos];
            versions := ARRAY[v_ver];
            RETURN;
        END IF;
    ELSIF v_cur >= 0 THEN
        SELECT count(e.position)::int,
               array_agg(e.position ORDER BY x.ord),
               array_agg(e.version ORDER BY x.ord),
               (array_agg(x.id ORDER BY x.ord) FILTER (WHERE e.position IS NOT NULL))[1]
          INTO v_hits, positions, versions, dup_id
          FROM unnest(p_ids) WITH ORDINALITY AS x(id, ord)
          LEFT JOIN events e ON e.stream_id = v_sid AND e.event_id = x.id;
        IF v_hits = v_n THEN
            status := 1;
            actual := v_cur;
            dup_id := NULL;
            RETURN;
        ELSIF v_hits > 0 THEN
            status := 3;
            positions := NULL;
            versions := NULL;
            RETURN;
        END IF;
        positions := NULL;
        versions := NULL;
        dup_id := NULL;
    END IF;
    IF NOT (p_kind = 0
            OR (p_kind = 1 AND v_cur < 0)
            OR (p_kind = 2 AND v_cur >= 0)
            OR (p_kind = 3 AND v_cur = p_expected)) THEN
        status := 2;
        actual := CASE WHEN v_cur < 0 THEN NULL ELSE v_cur END;
        RETURN;
    END IF;
    -- Within a stream the global order (tx_id, position) must follow versions. A transaction
    -- that got its id before the one that appended the stream's last event (possible only when
    -- it wrote elsewhere first: a batch, an explicit transaction) must not append after it: it
    -- fails and is retried, with a new, larger id.
    IF v_last > pg_current_xact_id() THEN
        RAISE EXCEPTION USING
            ERRCODE = 'serialization_failure',
            MESSAGE = format('stream %s was last appended by a transaction younger than this one',
                             p_stream);
    END IF;
    IF v_n = 1 THEN
        INSERT INTO events (position, stream_id, version, event_id, local, payload)
        VALUES (nextval('event_positions'), v_sid, v_cur + 1, p_ids[1], p_locals[1], p_payloads[1])
        RETURNING position INTO v_pos;
        positions := ARRAY[v_pos];
        versions := ARRAY[v_cur + 1];
    ELSE
        -- Positions ascend with versions inside one append.
        SELECT array_agg(g.p ORDER BY g.p) INTO positions
          FROM (SELECT nextval('event_positions') AS p FROM generate_series(1, v_n)) g;
        SELECT array_agg(v_cur + i ORDER BY i) INTO versions FROM generate_series(1, v_n) i;
        INSERT INTO events (position, stream_id, version, event_id, local, payload)
        SELECT positions[i], v_sid, v_cur + i, p_ids[i], p_locals[i], p_payloads[i]
          FROM generate_series(1, v_n) i;
    END IF;
    UPDATE streams SET version = v_cur + v_n, last_tx = pg_current_xact_id() WHERE id = v_sid;
    status := 0;
    actual := v_cur + v_n;
END
$fn$;
"#;

/// The fast path of a single-event autocommit append to an existing stream whose version admits
/// it (Any, StreamExists, Exact): one statement, scalar parameters, no function call. No row
/// back: nothing was written, use [`APPEND`]. An id already in the stream aborts the statement
/// (SQLSTATE `OR001`, undoing the version move): use [`APPEND`], which answers the retry.
pub(crate) const APPEND_ONE: &str = "WITH s AS ( \
         UPDATE streams SET version = version + 1, last_tx = pg_current_xact_id() \
          WHERE name = $1::text AND version >= 0 \
            AND ($2::smallint = 0 OR $2::smallint = 2 \
                 OR ($2::smallint = 3 AND version = $3::bigint)) \
            AND (last_tx IS NULL OR last_tx <= pg_current_xact_id()) \
         RETURNING id, version), \
     e AS ( \
         INSERT INTO events (position, stream_id, version, event_id, local, payload) \
         SELECT nextval('event_positions'), s.id, s.version, $4::text, $5::boolean, $6::bytea \
           FROM s \
         ON CONFLICT (stream_id, event_id) DO NOTHING \
         RETURNING position) \
     SELECT CASE WHEN e.position IS NULL THEN outrider_fast_append_missed() \
                 ELSE e.position END, \
            s.version \
       FROM s LEFT JOIN e ON true";

/// SQLSTATE of [`APPEND_ONE`]'s abort.
pub(crate) const FAST_APPEND_MISSED: &str = "OR001";

pub(crate) const APPEND: &str =
    "SELECT status, actual, positions, versions, dup_id FROM outrider_append($1, $2, $3, $4, $5, $6)";

/// The safe horizon: every transaction with an id below the snapshot's xmin has ended, so no
/// event can still appear before (xmin, 0) in the global order. The horizon and the scan use the
/// same statement snapshot.
pub(crate) const READ_ALL_START: &str = "SELECT position, version, local, payload FROM events \
     WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
     ORDER BY tx_id, position LIMIT $1";

pub(crate) const READ_ALL_AFTER: &str =
    "SELECT e.position, e.version, e.local, e.payload FROM events e \
     WHERE (e.tx_id, e.position) > ((SELECT c.tx_id FROM events c WHERE c.position = $1), $1) \
       AND e.tx_id < pg_snapshot_xmin(pg_current_snapshot()) \
     ORDER BY e.tx_id, e.position LIMIT $2";

pub(crate) const POSITION_EXISTS: &str = "SELECT 1 FROM events WHERE position = $1";

/// The stream's version and a page of its events, in one snapshot. No row: no stream.
pub(crate) const READ_FORWARDS: &str =
    "SELECT s.version AS stream_version, e.position, e.version, e.local, e.payload \
     FROM streams s LEFT JOIN LATERAL ( \
         SELECT position, version, local, payload FROM events \
         WHERE stream_id = s.id AND version >= $2 ORDER BY version LIMIT $3) e ON true \
     WHERE s.name = $1 ORDER BY e.version";

pub(crate) const READ_BACKWARDS: &str =
    "SELECT s.version AS stream_version, e.position, e.version, e.local, e.payload \
     FROM streams s LEFT JOIN LATERAL ( \
         SELECT position, version, local, payload FROM events \
         WHERE stream_id = s.id AND version <= $2 ORDER BY version DESC LIMIT $3) e ON true \
     WHERE s.name = $1 ORDER BY e.version DESC";

pub(crate) const STREAM_VERSION: &str = "SELECT version FROM streams WHERE name = $1";

/// Saves a snapshot if the stream has the version and no newer snapshot exists; answers the
/// stream's version (NULL: no stream).
pub(crate) const SAVE_SNAPSHOT: &str =
    "WITH s AS (SELECT id, version FROM streams WHERE name = $1), \
     ins AS ( \
         INSERT INTO snapshots AS n (stream_id, version, payload) \
         SELECT s.id, $2, $3 FROM s WHERE s.version >= $2 \
         ON CONFLICT (stream_id) DO UPDATE \
             SET version = EXCLUDED.version, payload = EXCLUDED.payload, saved_at = now() \
             WHERE n.version <= EXCLUDED.version \
         RETURNING 1) \
     SELECT (SELECT version FROM s) AS stream_version";

pub(crate) const LOAD_SNAPSHOT: &str = "SELECT n.version, n.payload FROM snapshots n \
     JOIN streams s ON s.id = n.stream_id WHERE s.name = $1";

pub(crate) const SAVE_CHECKPOINT: &str =
    "INSERT INTO checkpoints (name, position) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()";

/// Writes only while the lease (consumer $3, holder $4, token $5) is held; the lease row is
/// share-locked, so it cannot change hands before this commits.
pub(crate) const SAVE_CHECKPOINT_FENCED: &str = "WITH l AS ( \
         SELECT 1 FROM leases \
         WHERE consumer = $3 AND holder = $4 AND token = $5 AND expires_at > clock_timestamp() \
         FOR SHARE) \
     INSERT INTO checkpoints (name, position) SELECT $1, $2 FROM l \
     ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()";

pub(crate) const LOAD_CHECKPOINT: &str = "SELECT position FROM checkpoints WHERE name = $1";

pub(crate) const WATERMARKS: &str =
    "SELECT name, value FROM watermarks WHERE starts_with(name, $1) ORDER BY name";

pub(crate) const WATERMARK_INSERT: &str =
    "INSERT INTO watermarks (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";

pub(crate) const WATERMARK_CAS: &str =
    "UPDATE watermarks SET value = $2 WHERE name = $1 AND value = $3";

pub(crate) const WATERMARK_GET: &str = "SELECT value FROM watermarks WHERE name = $1";

/// Takes a free or expired lease, or renews one's own (keeping its token). No row: held by
/// another holder.
pub(crate) const ACQUIRE_LEASE: &str =
    "INSERT INTO leases AS l (consumer, holder, token, expires_at) \
     VALUES ($1, $2, 1, clock_timestamp() + $3::bigint * interval '1 millisecond') \
     ON CONFLICT (consumer) DO UPDATE SET \
         holder = EXCLUDED.holder, \
         token = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > clock_timestamp() \
                      THEN l.token ELSE l.token + 1 END, \
         expires_at = EXCLUDED.expires_at \
     WHERE l.holder = EXCLUDED.holder OR l.expires_at <= clock_timestamp() \
     RETURNING token";

pub(crate) const RENEW_LEASE: &str = "UPDATE leases \
     SET expires_at = clock_timestamp() + $4::bigint * interval '1 millisecond' \
     WHERE consumer = $1 AND holder = $2 AND token = $3 AND expires_at > clock_timestamp()";

pub(crate) const RELEASE_LEASE: &str = "UPDATE leases SET expires_at = '-infinity' \
     WHERE consumer = $1 AND holder = $2 AND token = $3";
