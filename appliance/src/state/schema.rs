//! Ordered schema migrations. The database's `user_version` is the number of migrations applied.
//! Append only: a released migration is never edited, a change is a new one at the end.

pub const MIGRATIONS: &[&str] = &[
    // 1: the foundation: what the appliance knows of itself, its hosts and what happened.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) STRICT;

    CREATE TABLE events (
        id      INTEGER PRIMARY KEY,
        at_ms   INTEGER NOT NULL,          -- unix time, milliseconds
        level   TEXT NOT NULL CHECK (level IN ('info', 'warn', 'error')),
        kind    TEXT NOT NULL,             -- dotted, e.g. 'daemon.start', 'config.reload'
        subject TEXT,                      -- what it is about: a host, a VM, a network
        message TEXT NOT NULL
    ) STRICT;
    CREATE INDEX events_at ON events (at_ms);

    CREATE TABLE hosts (
        name        TEXT PRIMARY KEY,
        address     TEXT NOT NULL,
        hypervisor  TEXT NOT NULL CHECK (hypervisor IN ('xen', 'qemu')),
        ssh_user    TEXT NOT NULL,
        ssh_port    INTEGER NOT NULL,
        bridge      TEXT NOT NULL,
        host_key    TEXT,                  -- pinned SSH host key, NULL until pinned
        in_config   INTEGER NOT NULL DEFAULT 1,
        updated_ms  INTEGER NOT NULL
    ) STRICT;
    "#,
    // 2: inventory: whether each host answers, and its collected facts with history.
    r#"
    ALTER TABLE hosts ADD COLUMN status TEXT NOT NULL DEFAULT 'unknown'
        CHECK (status IN ('unknown', 'up', 'down'));
    ALTER TABLE hosts ADD COLUMN status_reason TEXT;
    ALTER TABLE hosts ADD COLUMN last_seen_ms INTEGER;

    CREATE TABLE host_facts (
        id           INTEGER PRIMARY KEY,
        host         TEXT NOT NULL REFERENCES hosts (name) ON DELETE CASCADE,
        collected_ms INTEGER NOT NULL,
        duration_ms  INTEGER NOT NULL,
        facts        TEXT NOT NULL         -- JSON, inventory::facts::HostFacts
    ) STRICT;
    CREATE INDEX host_facts_host ON host_facts (host, id);
    "#,
    // 3: the image store's FTP accounts and its manifest.
    r#"
    CREATE TABLE ftp_accounts (
        name          TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,       -- argon2id, PHC string
        write_vms     TEXT NOT NULL,       -- JSON array of VM names, or ["*"]
        read_vms      TEXT NOT NULL,
        expires_ms    INTEGER,             -- one-time accounts end
        created_ms    INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE images (
        vm          TEXT NOT NULL,
        generation  INTEGER NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('uploading', 'published', 'failed', 'deleted')),
        size        INTEGER,
        sha256      TEXT,
        uploader    TEXT,
        reason      TEXT,
        created_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL,
        PRIMARY KEY (vm, generation)
    ) STRICT;
    "#,
    // 4: VM definitions and where each runs; migrations and their journal.
    r#"
    CREATE TABLE vms (
        name        TEXT PRIMARY KEY,
        host        TEXT,                  -- where it runs or last ran; NULL before its first start
        state       TEXT NOT NULL CHECK (state IN ('defined', 'running', 'stopped', 'migrating')),
        def         TEXT NOT NULL,         -- JSON, hypervisor::VmDef
        updated_ms  INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE migrations (
        id          INTEGER PRIMARY KEY,
        vm          TEXT NOT NULL,
        source      TEXT NOT NULL,
        target      TEXT NOT NULL,
        mode        TEXT NOT NULL CHECK (mode IN ('cold', 'live')),
        state       TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'rolled-back')),
        reason      TEXT,
        started_ms  INTEGER NOT NULL,
        finished_ms INTEGER,
        break_ms    INTEGER,               -- the built-in probe's longest gap
        detail      TEXT NOT NULL DEFAULT '{}'  -- JSON: image, checksums, fallbacks
    ) STRICT;
    CREATE INDEX migrations_vm ON migrations (vm, id);

    -- The journal: a step is written before its side effect and marked after it.
    CREATE TABLE migration_steps (
        migration   INTEGER NOT NULL REFERENCES migrations (id),
        seq         INTEGER NOT NULL,
        step        TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('started', 'done', 'failed', 'undone')),
        started_ms  INTEGER NOT NULL,
        finished_ms INTEGER,
        detail      TEXT,
        PRIMARY KEY (migration, seq)
    ) STRICT;
    "#,
    // 5: batches: the moves of one plan run together, with concurrency limits.
    r#"
    CREATE TABLE batches (
        id          INTEGER PRIMARY KEY,
        state       TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'interrupted')),
        reason      TEXT,
        request     TEXT NOT NULL,         -- JSON, migrate::batch::BatchRequest
        plan        TEXT NOT NULL,         -- JSON, placement::Plan
        started_ms  INTEGER NOT NULL,
        finished_ms INTEGER
    ) STRICT;
    ALTER TABLE migrations ADD COLUMN batch INTEGER REFERENCES batches (id);
    CREATE INDEX migrations_batch ON migrations (batch);
    "#,
    // 6: DHCP leases, committed before the ACK leaves.
    r#"
    CREATE TABLE leases (
        network     TEXT NOT NULL,
        ip          TEXT NOT NULL,
        client      BLOB NOT NULL,          -- option 61, or 1 + MAC
        mac         TEXT NOT NULL,
        hostname    TEXT,
        state       TEXT NOT NULL CHECK (state IN ('bound', 'released', 'declined')),
        expires_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL,
        PRIMARY KEY (network, ip)
    ) STRICT;
    CREATE INDEX leases_client ON leases (network, client);
    "#,
    // 7: reservations made at run time (`netmigrate reservations add`), beside the config's.
    r#"
    CREATE TABLE reservations (
        network     TEXT NOT NULL,
        ip          TEXT NOT NULL,
        mac         TEXT,
        client_id   TEXT,                   -- hex pairs, like 01:52:54:00:00:00:10
        hostname    TEXT,
        created_ms  INTEGER NOT NULL,
        PRIMARY KEY (network, ip),
        CHECK (mac IS NOT NULL OR client_id IS NOT NULL OR hostname IS NOT NULL)
    ) STRICT;
    "#,
    // 8: DNS records added by RFC 2136 updates (the others follow leases, hosts and VMs).
    r#"
    CREATE TABLE dns_records (
        id          INTEGER PRIMARY KEY,
        wire        BLOB NOT NULL,          -- the record in DNS wire form
        text        TEXT NOT NULL           -- as a zone file shows it
    ) STRICT;
    "#,
    // 9: images kept compressed at rest: how, and the bytes they take.
    r#"
    ALTER TABLE images ADD COLUMN compression TEXT;
    ALTER TABLE images ADD COLUMN stored INTEGER;
    "#,
    // 10: provisioning: machines that network-booted, through their enrolment; hosts that
    // enrolled this way (they are in no config file).
    r#"
    CREATE TABLE machines (
        mac            TEXT PRIMARY KEY,
        network        TEXT NOT NULL,
        stage          TEXT NOT NULL
            CHECK (stage IN ('discovered', 'accepted', 'booting', 'ready')),
        vendor_class   TEXT,
        arch           INTEGER,
        first_seen_ms  INTEGER NOT NULL,
        last_seen_ms   INTEGER NOT NULL,
        name           TEXT UNIQUE,            -- from accepted on
        ip             TEXT UNIQUE,
        accepted_why   TEXT,
        token_hash     TEXT,                   -- SHA-256 of the one-time token, while booting
        token_expires_ms INTEGER,
        host_key       TEXT,                   -- pinned at the call back
        ready_ms       INTEGER
    ) STRICT;
    ALTER TABLE hosts ADD COLUMN enrolled INTEGER NOT NULL DEFAULT 0;
    "#,
    // 11: machines are commissioned (their installer reports the hardware) and, beyond
    // booting an installer, deployed onto a disk: the stages of that life, the report, the
    // profile a machine is deployed with, why a deployment failed, its BMC. A CHECK cannot be
    // altered: the table is made again.
    r#"
    CREATE TABLE machines_11 (
        mac            TEXT PRIMARY KEY,
        network        TEXT NOT NULL,
        stage          TEXT NOT NULL
            CHECK (stage IN ('discovered', 'commissioning', 'accepted', 'booting', 'deploying',
                             'rebooting', 'ready', 'failed')),
        vendor_class   TEXT,
        arch           INTEGER,
        first_seen_ms  INTEGER NOT NULL,
        last_seen_ms   INTEGER NOT NULL,
        name           TEXT UNIQUE,
        ip             TEXT UNIQUE,
        accepted_why   TEXT,
        token_hash     TEXT,
        token_expires_ms INTEGER,
        host_key       TEXT,
        ready_ms       INTEGER,
        hardware       TEXT,                   -- the commissioning report (JSON)
        commissioned_ms INTEGER,
        profile        TEXT,                   -- [[provisioning.profile]] it is deployed with
        stage_ms       INTEGER,                -- when it entered its stage
        failed_why     TEXT,
        bmc            TEXT                    -- its BMC for power control (JSON)
    ) STRICT;
    INSERT INTO machines_11 (mac, network, stage, vendor_class, arch, first_seen_ms, last_seen_ms,
        name, ip, accepted_why, token_hash, token_expires_ms, host_key, ready_ms)
      SELECT mac, network, stage, vendor_class, arch, first_seen_ms, last_seen_ms,
        name, ip, accepted_why, token_hash, token_expires_ms, host_key, ready_ms FROM machines;
    DROP TABLE machines;
    ALTER TABLE machines_11 RENAME TO machines;
    "#,
];

/// Collections kept per host (older ones are deleted as new ones arrive).
pub const FACTS_HISTORY: i64 = 20;

/// The schema version this build writes.
pub fn latest() -> i64 {
    MIGRATIONS.len() as i64
}
