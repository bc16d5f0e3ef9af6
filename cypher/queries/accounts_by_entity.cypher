// Purpose: every account tied to a given payment instrument, IP, subnet, device or prompt template
// (the value is looked up under each of those keys), with its ring if any.
// Parameters: $value (string: instrument_id, ip, subnet, device_id or template_id)
// Example: linkage query accounts_by_entity --param value=card_ring_0
CALL () {
  MATCH (e:PaymentInstrument {instrument_id: $value}) RETURN e
  UNION MATCH (e:IP {ip: $value}) RETURN e
  UNION MATCH (e:Subnet {subnet: $value}) RETURN e
  UNION MATCH (e:Device {device_id: $value}) RETURN e
  UNION MATCH (e:PromptTemplate {template_id: $value}) RETURN e
}
MATCH (a:Account)-[r]->(e)
OPTIONAL MATCH (a)-[:MEMBER_OF]->(ring:Ring)
RETURN labels(e)[0] AS kind, a.account_id AS account_id, type(r) AS relationship, r.count AS uses,
       r.first_seen AS first_seen, r.last_seen AS last_seen, ring.ring_id AS ring_id, ring.flagged AS flagged
ORDER BY account_id, relationship
