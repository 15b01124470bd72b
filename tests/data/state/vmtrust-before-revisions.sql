-- A state database as vmtrust wrote it before its schema had revisions (git main at
-- 2571ec5, glance_sync/state.py), dumped with sqlite3's iterdump: the upgrade tests
-- load it into a file and open it with today's StateDB.
BEGIN TRANSACTION;
CREATE TABLE image_failure (
    subscription    TEXT NOT NULL,
    identifier      TEXT NOT NULL,
    version         TEXT NOT NULL,
    title           TEXT NOT NULL,
    reason          TEXT NOT NULL,
    failed_at       TEXT NOT NULL
);
INSERT INTO "image_failure" VALUES('egi-base','img-b','3','Ubuntu 24.04','sha512 mismatch','2026-12-01T10:00:00Z');
CREATE TABLE subscription_state (
    name            TEXT PRIMARY KEY,
    list_identifier TEXT,
    list_version    TEXT,
    list_created    TEXT,
    list_expires    TEXT,
    list_sha512     TEXT,
    known_images    TEXT,
    last_attempt    TEXT,
    last_success    TEXT,
    last_error      TEXT
);
INSERT INTO "subscription_state" VALUES('egi-base','11111111-2222-3333-4444-555555555555','20261130','2026-11-29T00:00:00Z','2026-12-29T00:00:00Z','abababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababababab','["img-a", "img-b"]','2026-12-01T10:00:00Z','2026-11-30T10:00:00Z','http://127.0.0.1/x.list: HTTP 503 Service Unavailable');
INSERT INTO "subscription_state" VALUES('never-ok',NULL,NULL,NULL,NULL,NULL,NULL,'2026-12-01T10:00:00Z',NULL,'certificate expired');
COMMIT;
