// Purpose: what two accounts share — every entity both touch, with how many accounts share it,
// rarest first (the weight each contributed to their link: `linkage explain OUT A B`).
// Param: a string — one account_id
// Param: b string — the other account_id
// Param: limit integer = 50 — entities at most
// Example: linkage query why_linked --param a=ring_00 --param b=ring_05
MATCH (:Account {account_id: $a})-[r1]->(e)
WHERE NOT (e:Ring OR e:Run OR e:Account)  // evidence only: not rings, runs, or explain's LINKED
WITH e, sum(r1.count) AS uses_a
MATCH (e)<-[r2]-(:Account {account_id: $b})
WITH e, labels(e)[0] AS kind, uses_a, sum(r2.count) AS uses_b
CALL (e) { MATCH (e)<--(other:Account) RETURN count(DISTINCT other) AS shared_by }
RETURN kind, coalesce(e.instrument_id, e.ip, e.subnet, toString(e.asn), e.device_id, e.template_id, e.org_id,
                      e.domain, e.model) AS entity, uses_a, uses_b, shared_by
ORDER BY shared_by ASC, kind, entity
LIMIT $limit
