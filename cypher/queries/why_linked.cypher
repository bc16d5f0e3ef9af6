// Purpose: why two accounts are linked — every entity both touch (card, IP, subnet, device,
// template, email domain, org) with how many accounts share it, and the two-hop paths themselves.
// Parameters: $a (account_id), $b (account_id)
// Example: linkage query why_linked --param a=ring_00 --param b=ring_05
MATCH (x:Account {account_id: $a})-[r1]->(e)<-[r2]-(y:Account {account_id: $b})
WHERE NOT e:Ring
WITH e, r1, r2, labels(e)[0] AS kind
CALL (e) { MATCH (e)<--(other:Account) RETURN count(DISTINCT other) AS shared_by }
RETURN kind, coalesce(e.instrument_id, e.ip, e.subnet, toString(e.asn), e.device_id, e.template_id, e.org_id,
                      e.domain, e.model) AS entity,
       type(r1) AS relationship, r1.count AS uses_a, r2.count AS uses_b, shared_by
ORDER BY shared_by ASC, kind
