// Graph load statements, one per node label and relationship type. Each takes $rows, a batch
// of maps; MERGE on the unique key makes every load idempotent (the same input twice leaves the
// graph identical). Timestamps travel as epoch milliseconds (cheap to send) and are stored as
// DATETIME. The Python store picks a statement by its `// :name` header.

// :name node_Account
UNWIND $rows AS row MERGE (n:Account {account_id: row.account_id})
SET n += row,
    n.created_at = CASE WHEN row.created_at IS NULL THEN null ELSE datetime({epochMillis: row.created_at}) END,
    n.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END,
    n.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;

// :name node_PaymentInstrument
UNWIND $rows AS row MERGE (n:PaymentInstrument {instrument_id: row.instrument_id})
SET n += row;

// :name node_IP
UNWIND $rows AS row MERGE (n:IP {ip: row.ip})
SET n += row;

// :name node_Subnet
UNWIND $rows AS row MERGE (n:Subnet {subnet: row.subnet})
SET n += row;

// :name node_ASN
UNWIND $rows AS row MERGE (n:ASN {asn: row.asn})
SET n += row;

// :name node_Device
UNWIND $rows AS row MERGE (n:Device {device_id: row.device_id})
SET n += row;

// :name node_PromptTemplate
UNWIND $rows AS row MERGE (n:PromptTemplate {template_id: row.template_id})
SET n += row;

// :name node_Org
UNWIND $rows AS row MERGE (n:Org {org_id: row.org_id})
SET n += row;

// :name node_EmailDomain
UNWIND $rows AS row MERGE (n:EmailDomain {domain: row.domain})
SET n += row;

// :name node_Model
UNWIND $rows AS row MERGE (n:Model {model: row.model})
SET n += row;

// :name rel_PAID_WITH
UNWIND $rows AS row
MATCH (a:Account {account_id: row.src})
MATCH (b:PaymentInstrument {instrument_id: row.dst})
MERGE (a)-[r:PAID_WITH]->(b)
SET r.count = row.count, r.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END, r.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;

// :name rel_USED_IP
UNWIND $rows AS row
MATCH (a:Account {account_id: row.src})
MATCH (b:IP {ip: row.dst})
MERGE (a)-[r:USED_IP]->(b)
SET r.count = row.count, r.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END, r.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;

// :name rel_SIGNED_UP_FROM
UNWIND $rows AS row
MATCH (a:Account {account_id: row.src})
MATCH (b:IP {ip: row.dst})
MERGE (a)-[r:SIGNED_UP_FROM]->(b)
SET r.count = row.count, r.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END, r.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;

// :name rel_USED_DEVICE
UNWIND $rows AS row
MATCH (a:Account {account_id: row.src})
MATCH (b:Device {device_id: row.dst})
MERGE (a)-[r:USED_DEVICE]->(b)
SET r.count = row.count, r.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END, r.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;

// :name rel_SENT_TEMPLATE
UNWIND $rows AS row
MATCH (a:Account {account_id: row.src})
MATCH (b:PromptTemplate {template_id: row.dst})
MERGE (a)-[r:SENT_TEMPLATE]->(b)
SET r.count = row.count, r.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END, r.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;

// :name rel_IN_ORG
UNWIND $rows AS row
MATCH (a:Account {account_id: row.src})
MATCH (b:Org {org_id: row.dst})
MERGE (a)-[r:IN_ORG]->(b)
SET r.count = row.count, r.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END, r.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;

// :name rel_HAS_EMAIL_DOMAIN
UNWIND $rows AS row
MATCH (a:Account {account_id: row.src})
MATCH (b:EmailDomain {domain: row.dst})
MERGE (a)-[r:HAS_EMAIL_DOMAIN]->(b)
SET r.count = row.count, r.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END, r.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;

// :name rel_USED_MODEL
UNWIND $rows AS row
MATCH (a:Account {account_id: row.src})
MATCH (b:Model {model: row.dst})
MERGE (a)-[r:USED_MODEL]->(b)
SET r.count = row.count, r.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END, r.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;

// :name rel_IN_SUBNET
UNWIND $rows AS row
MATCH (a:IP {ip: row.src})
MATCH (b:Subnet {subnet: row.dst})
MERGE (a)-[r:IN_SUBNET]->(b)
SET r.count = row.count, r.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END, r.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;

// :name rel_ROUTED_BY
UNWIND $rows AS row
MATCH (a:IP {ip: row.src})
MATCH (b:ASN {asn: row.dst})
MERGE (a)-[r:ROUTED_BY]->(b)
SET r.count = row.count, r.first_seen = CASE WHEN row.first_seen IS NULL THEN null ELSE datetime({epochMillis: row.first_seen}) END, r.last_seen = CASE WHEN row.last_seen IS NULL THEN null ELSE datetime({epochMillis: row.last_seen}) END;
