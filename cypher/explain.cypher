// What `linkage explain --neo4j` reads: for the members of flagged rings, every link detection kept
// with each step of its weight, and the value of each entity they hold. Written by the store after
// the rings, in one transaction that replaces the previous run's; read-only queries below.

// :name delete_explanation
MATCH (:Account)-[l:LINKED]->(:Account) DELETE l
WITH count(*) AS gone
MATCH (:Account)-[h:HOLDS]->(:Run) DELETE h;

// :name create_links
UNWIND $links AS l
MATCH (a:Account {account_id: l.account_a})
MATCH (b:Account {account_id: l.account_b})
CREATE (a)-[:LINKED {weight: l.weight, activity: l.activity, days: l.days, shared: l.shared,
                     discount: l.discount, surprisal: l.surprisal, families: l.families}]->(b);

// :name create_holdings
UNWIND $rows AS h
MATCH (a:Account {account_id: h.account_id})
MATCH (run:Run {run_id: $run_id})
CREATE (a)-[:HOLDS {idx: h.idx, entity: h.entity, type: h.type, value: h.value, degree: h.degree,
                    held: h.held, label: h.label}]->(run);

// :name record_detect_settings
MATCH (run:Run {run_id: $run_id})
SET run.detect_settings = $settings;

// :name read_links
MATCH (a:Account)-[l:LINKED]->(b:Account)
RETURN {account_a: a.account_id, account_b: b.account_id, weight: l.weight, activity: l.activity,
        days: l.days, shared: l.shared, discount: l.discount, surprisal: l.surprisal,
        families: l.families} AS row;

// :name read_holdings
MATCH (a:Account)-[h:HOLDS]->(:Run)
RETURN {idx: h.idx, account_id: a.account_id, entity: h.entity, type: h.type, value: h.value,
        degree: h.degree, held: h.held, label: h.label} AS row;

// :name read_members
MATCH (a:Account)-[m:MEMBER_OF]->(r:Ring)
RETURN {ring_id: r.ring_id, account_id: a.account_id, account_score: m.account_score,
        attachment: m.attachment, strength: m.strength} AS row;

// :name read_detect_settings
MATCH (run:Run) WHERE run.detect_settings IS NOT NULL
RETURN run.detect_settings AS settings ORDER BY run.finished_at DESC LIMIT 1;
