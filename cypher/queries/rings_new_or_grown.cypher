// Purpose: rings that are new or have grown since the previous run (from the ring changes each
// rebuild records on the ring), largest growth first.
// Param: min_growth integer = 0 — members gained at least (0 lists every new ring)
// Example: linkage query rings_new_or_grown --param min_growth=0
MATCH (r:Ring)
WHERE r.change IN ['new', 'grown', 'merged'] AND coalesce(r.size - r.previous_size, r.size) >= $min_growth
RETURN r.ring_id AS ring_id, r.change AS change, r.previous_size AS previous_size, r.size AS size,
       r.score AS score, r.flagged AS flagged, r.run_id AS run_id
ORDER BY coalesce(r.size - r.previous_size, r.size) DESC, ring_id
