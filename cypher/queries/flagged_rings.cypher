// Purpose: the current flagged rings, highest score first, with their size, whether the content reading scored them, and evidence.
// Param: limit integer = 50 — rings at most
// Example: linkage query flagged_rings --param limit=20
MATCH (r:Ring {flagged: true})
RETURN r.ring_id AS ring_id, r.score AS score, r.size AS size, r.content_reading AS content_reading,
       r.evidence AS evidence, r.run_id AS run_id
ORDER BY score DESC, ring_id
LIMIT $limit
