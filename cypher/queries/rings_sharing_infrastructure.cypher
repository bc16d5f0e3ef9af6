// Purpose: pairs of rings whose members share infrastructure (cards, IPs, subnets, devices,
// templates), with the shared entities — campaigns that split or run several rings.
// Param: min_shared integer = 1 — shared entities at least
// Param: limit integer = 50 — ring pairs at most
// Example: linkage query rings_sharing_infrastructure --param min_shared=1 --param limit=50
MATCH (r1:Ring)<-[:MEMBER_OF]-(:Account)-->(e)<--(:Account)-[:MEMBER_OF]->(r2:Ring)
WHERE r1.ring_id < r2.ring_id AND (e:PaymentInstrument OR e:IP OR e:Subnet OR e:Device OR e:PromptTemplate)
WITH DISTINCT r1, r2, labels(e)[0] + ':' + coalesce(e.instrument_id, e.ip, e.subnet, e.device_id, e.template_id) AS item
ORDER BY item
WITH r1, r2, collect(item) AS shared
WHERE size(shared) >= $min_shared
RETURN r1.ring_id AS ring_a, r2.ring_id AS ring_b, r1.flagged AS flagged_a, r2.flagged AS flagged_b,
       size(shared) AS shared_entities, shared[0..20] AS examples
ORDER BY shared_entities DESC, ring_a, ring_b
LIMIT $limit
