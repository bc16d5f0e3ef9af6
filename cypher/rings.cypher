// Ring write-back. The store runs these in ONE write transaction, so a reader sees either the
// previous run's rings or the new ones, never a mix.

// :name delete_rings
MATCH (r:Ring) DETACH DELETE r;

// :name create_rings
UNWIND $rings AS ring
CREATE (r:Ring)
SET r = ring;

// :name create_members
UNWIND $members AS m
MATCH (r:Ring {ring_id: m.ring_id})
MATCH (a:Account {account_id: m.account_id})
CREATE (a)-[:MEMBER_OF {account_score: m.account_score, attachment: m.attachment, strength: m.strength}]->(r);

// :name record_run
MERGE (run:Run {run_id: $run_id})
SET run += $props
WITH run
MATCH (r:Ring) MERGE (r)-[:FOUND_IN]->(run);

// :name graph_counts
CALL () { MATCH (n) RETURN count(n) AS nodes }
CALL () { MATCH ()-[r]->() RETURN count(r) AS relationships }
RETURN nodes, relationships;
