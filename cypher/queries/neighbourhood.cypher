// Purpose: an account's neighbourhood — accounts reachable through shared entities (cards, IPs,
// devices, templates, orgs) within $depth account-to-account hops (1–3), never through an entity
// shared by more than $max_shared accounts, and never expanding more than $frontier accounts a hop:
// bounded whatever the graph (hop by hop, not a variable-length path expanded before its filters).
// Param: account_id string — the account to start from
// Param: depth integer = 2 — account-to-account hops, 1 to 3
// Param: max_shared integer = 200 — entities shared by more accounts are not followed
// Param: frontier integer = 500 — accounts expanded per hop at most
// Param: limit integer = 200 — rows at most
// Example: linkage query neighbourhood --param account_id=ring_00 --param depth=2
MATCH (start:Account {account_id: $account_id})
CALL (start) {
  MATCH (start)-[:PAID_WITH|USED_IP|USED_DEVICE|SENT_TEMPLATE|IN_ORG]->(e)
  WHERE COUNT { (e)<-[:PAID_WITH|USED_IP|USED_DEVICE|SENT_TEMPLATE|IN_ORG]-(:Account) } <= $max_shared
  MATCH (e)<-[:PAID_WITH|USED_IP|USED_DEVICE|SENT_TEMPLATE|IN_ORG]-(n:Account)
  WHERE n <> start
  WITH DISTINCT n ORDER BY n.account_id LIMIT $frontier
  RETURN collect(n) AS hop1
}
CALL (start, hop1) {
  UNWIND CASE WHEN $depth >= 2 THEN hop1 ELSE [] END AS a
  MATCH (a)-[:PAID_WITH|USED_IP|USED_DEVICE|SENT_TEMPLATE|IN_ORG]->(e)
  WHERE COUNT { (e)<-[:PAID_WITH|USED_IP|USED_DEVICE|SENT_TEMPLATE|IN_ORG]-(:Account) } <= $max_shared
  MATCH (e)<-[:PAID_WITH|USED_IP|USED_DEVICE|SENT_TEMPLATE|IN_ORG]-(n:Account)
  WHERE n <> start AND NOT n IN hop1
  WITH DISTINCT n ORDER BY n.account_id LIMIT $frontier
  RETURN collect(n) AS hop2
}
CALL (start, hop1, hop2) {
  UNWIND CASE WHEN $depth >= 3 THEN hop2 ELSE [] END AS a
  MATCH (a)-[:PAID_WITH|USED_IP|USED_DEVICE|SENT_TEMPLATE|IN_ORG]->(e)
  WHERE COUNT { (e)<-[:PAID_WITH|USED_IP|USED_DEVICE|SENT_TEMPLATE|IN_ORG]-(:Account) } <= $max_shared
  MATCH (e)<-[:PAID_WITH|USED_IP|USED_DEVICE|SENT_TEMPLATE|IN_ORG]-(n:Account)
  WHERE n <> start AND NOT n IN hop1 AND NOT n IN hop2
  WITH DISTINCT n ORDER BY n.account_id LIMIT $frontier
  RETURN collect(n) AS hop3
}
UNWIND [x IN hop1 | [x, 1]] + [x IN hop2 | [x, 2]] + [x IN hop3 | [x, 3]] AS found
WITH found[0] AS other, found[1] AS hops
OPTIONAL MATCH (other)-[:MEMBER_OF]->(ring:Ring)
RETURN other.account_id AS account_id, hops, ring.ring_id AS ring_id, ring.flagged AS flagged
ORDER BY hops, account_id
LIMIT $limit
