// Purpose: an account's neighbourhood — accounts reachable through shared entities (cards, IPs,
// devices, templates, email domains, orgs) within $depth account-to-account hops (1–3), not
// passing through entities shared by more than $max_shared accounts.
// Parameters: $account_id (string), $depth (integer 1–3), $max_shared (integer, e.g. 200), $limit (integer)
// Example: linkage query neighbourhood --param account_id=ring_00 --param depth=2 --param max_shared=200 --param limit=100
MATCH p = (start:Account {account_id: $account_id})
          -[:PAID_WITH|USED_IP|SIGNED_UP_FROM|USED_DEVICE|SENT_TEMPLATE|IN_ORG|HAS_EMAIL_DOMAIN*2..6]-(other:Account)
WHERE length(p) <= 2 * $depth AND other <> start
  AND all(n IN nodes(p) WHERE n:Account OR COUNT { (n)<--(:Account) } <= $max_shared)
WITH other, min(length(p) / 2) AS hops
OPTIONAL MATCH (other)-[:MEMBER_OF]->(ring:Ring)
RETURN other.account_id AS account_id, hops, ring.ring_id AS ring_id, ring.flagged AS flagged
ORDER BY hops, account_id
LIMIT $limit
