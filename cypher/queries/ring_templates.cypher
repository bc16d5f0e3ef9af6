// Purpose: a ring's most used prompt templates, with the scaffold text and an example prompt;
// repeated_by: accounts that fill the template twice or more (0: a combination met once each, no evidence).
// Param: ring_id string — the ring
// Param: limit integer = 5 — templates at most
// Example: linkage query ring_templates --param ring_id=Re705212898f8 --param limit=5
MATCH (:Ring {ring_id: $ring_id})<-[:MEMBER_OF]-(a:Account)-[s:SENT_TEMPLATE]->(t:PromptTemplate)
WITH t, sum(s.count) AS ring_requests, count(DISTINCT a) AS members
RETURN t.template_id AS template_id, members, ring_requests, t.requests AS all_requests,
       t.accounts AS all_accounts, t.repeated_by AS repeated_by, t.text AS scaffold, t.example AS example
ORDER BY ring_requests DESC, template_id
LIMIT $limit
