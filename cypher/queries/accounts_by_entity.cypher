// Purpose: every account tied to a piece of evidence, looked up by its value under every evidence
// type (or only under $kind): card (instrument_id), BIN, IP, subnet, ASN, device, template (its id,
// or words of its scaffold text), org, email domain, model, mailbox — with the account's ring.
// Param: value string — the value to look up (a template is also found by a part of its text)
// Param: kind string = "any" — one of any, PaymentInstrument, Bin, IP, Subnet, ASN, Device, PromptTemplate, Org, EmailDomain, Model, Email
// Param: limit integer = 500 — rows at most
// Example: linkage query accounts_by_entity --param value=card_ring_0
CALL () {
  MATCH (a:Account)-[r:PAID_WITH]->(e:PaymentInstrument)
  WHERE $kind IN ['any', 'PaymentInstrument'] AND e.instrument_id = $value
  RETURN 'PaymentInstrument' AS kind, e.instrument_id AS entity, a, r
  UNION
  MATCH (a:Account)-[r:PAID_WITH]->(e:PaymentInstrument)
  WHERE $kind IN ['any', 'Bin'] AND e.bin = $value
  RETURN 'Bin' AS kind, e.bin AS entity, a, r
  UNION
  MATCH (a:Account)-[r:USED_IP|SIGNED_UP_FROM]->(e:IP)
  WHERE $kind IN ['any', 'IP'] AND e.ip = $value
  RETURN 'IP' AS kind, e.ip AS entity, a, r
  UNION
  MATCH (a:Account)-[r:USED_IP|SIGNED_UP_FROM]->(:IP)-[:IN_SUBNET]->(e:Subnet)
  WHERE $kind IN ['any', 'Subnet'] AND e.subnet = $value
  RETURN 'Subnet' AS kind, e.subnet AS entity, a, r
  UNION
  MATCH (a:Account)-[r:USED_IP]->(:IP)-[:ROUTED_BY]->(e:ASN)
  WHERE $kind IN ['any', 'ASN'] AND toString(e.asn) = $value
  RETURN 'ASN' AS kind, toString(e.asn) AS entity, a, r
  UNION
  MATCH (a:Account)-[r:USED_DEVICE]->(e:Device)
  WHERE $kind IN ['any', 'Device'] AND e.device_id = $value
  RETURN 'Device' AS kind, e.device_id AS entity, a, r
  UNION
  MATCH (a:Account)-[r:SENT_TEMPLATE]->(e:PromptTemplate)
  WHERE $kind IN ['any', 'PromptTemplate'] AND (e.template_id = $value OR e.text CONTAINS toLower($value))
  RETURN 'PromptTemplate' AS kind, e.template_id AS entity, a, r
  UNION
  MATCH (a:Account)-[r:IN_ORG]->(e:Org)
  WHERE $kind IN ['any', 'Org'] AND e.org_id = $value
  RETURN 'Org' AS kind, e.org_id AS entity, a, r
  UNION
  MATCH (a:Account)-[r:HAS_EMAIL_DOMAIN]->(e:EmailDomain)
  WHERE $kind IN ['any', 'EmailDomain'] AND e.domain = toLower($value)
  RETURN 'EmailDomain' AS kind, e.domain AS entity, a, r
  UNION
  MATCH (a:Account)-[r:USED_MODEL]->(e:Model)
  WHERE $kind IN ['any', 'Model'] AND e.model = $value
  RETURN 'Model' AS kind, e.model AS entity, a, r
  UNION
  MATCH (a:Account)
  WHERE $kind IN ['any', 'Email'] AND a.email = toLower($value)
  RETURN 'Email' AS kind, a.email AS entity, a, null AS r
}
OPTIONAL MATCH (a)-[:MEMBER_OF]->(ring:Ring)
RETURN DISTINCT kind, entity, a.account_id AS account_id, type(r) AS relationship, r.count AS uses,
       ring.ring_id AS ring_id, ring.flagged AS flagged
ORDER BY kind, entity, account_id, relationship, uses
LIMIT $limit
