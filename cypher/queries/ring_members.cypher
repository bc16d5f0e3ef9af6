// Purpose: members of a ring with their scores, and the ring's score and evidence.
// Param: ring_id string — the ring (ring_id in rings.csv)
// Example: linkage query ring_members --param ring_id=Re705212898f8
MATCH (r:Ring {ring_id: $ring_id})<-[m:MEMBER_OF]-(a:Account)
RETURN r.ring_id AS ring_id, r.score AS ring_score, r.flagged AS flagged, a.account_id AS account_id,
       m.account_score AS account_score, m.attachment AS attachment, a.org_id AS org_id,
       a.requests AS requests, a.created_at AS created_at, r.evidence AS evidence
ORDER BY account_score DESC, account_id
