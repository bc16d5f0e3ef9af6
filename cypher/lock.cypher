// The database-wide load lock: one writer (run --neo4j, rebuild --neo4j, detect write-back) at a
// time, so two loads never interleave their ring write-backs. A lease that expires, so a killed
// holder never blocks the next night; the holder's heartbeat renews it while it lives. $stale: a
// holder known dead (its process is gone on this host), whose lease is taken over at once.

// :name take_lock
MERGE (l:LinkageLock {name: $name})
WITH l
WHERE l.holder IS NULL OR l.holder = $holder OR l.holder = $stale OR l.expires_ms < $now_ms
SET l.holder = $holder, l.expires_ms = $now_ms + $lease_ms, l.taken_at_ms = coalesce(l.taken_at_ms, $now_ms)
RETURN l.holder AS holder;

// :name lock_holder
MATCH (l:LinkageLock {name: $name})
RETURN l.holder AS holder, l.expires_ms AS expires_ms;

// :name release_lock
MATCH (l:LinkageLock {name: $name, holder: $holder})
DELETE l;
