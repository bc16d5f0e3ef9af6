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

// Removals: what an incremental load must delete so that the database equals a full load of
// the same input (a partition removed or changed). $keys: node keys; $rows: {src, dst} maps.

// :name unload_rel_PAID_WITH
UNWIND $rows AS row
MATCH (:Account {account_id: row.src})-[r:PAID_WITH]->(:PaymentInstrument {instrument_id: row.dst})
DELETE r;

// :name unload_rel_USED_IP
UNWIND $rows AS row
MATCH (:Account {account_id: row.src})-[r:USED_IP]->(:IP {ip: row.dst})
DELETE r;

// :name unload_rel_SIGNED_UP_FROM
UNWIND $rows AS row
MATCH (:Account {account_id: row.src})-[r:SIGNED_UP_FROM]->(:IP {ip: row.dst})
DELETE r;

// :name unload_rel_USED_DEVICE
UNWIND $rows AS row
MATCH (:Account {account_id: row.src})-[r:USED_DEVICE]->(:Device {device_id: row.dst})
DELETE r;

// :name unload_rel_SENT_TEMPLATE
UNWIND $rows AS row
MATCH (:Account {account_id: row.src})-[r:SENT_TEMPLATE]->(:PromptTemplate {template_id: row.dst})
DELETE r;

// :name unload_rel_IN_ORG
UNWIND $rows AS row
MATCH (:Account {account_id: row.src})-[r:IN_ORG]->(:Org {org_id: row.dst})
DELETE r;

// :name unload_rel_HAS_EMAIL_DOMAIN
UNWIND $rows AS row
MATCH (:Account {account_id: row.src})-[r:HAS_EMAIL_DOMAIN]->(:EmailDomain {domain: row.dst})
DELETE r;

// :name unload_rel_USED_MODEL
UNWIND $rows AS row
MATCH (:Account {account_id: row.src})-[r:USED_MODEL]->(:Model {model: row.dst})
DELETE r;

// :name unload_rel_IN_SUBNET
UNWIND $rows AS row
MATCH (:IP {ip: row.src})-[r:IN_SUBNET]->(:Subnet {subnet: row.dst})
DELETE r;

// :name unload_rel_ROUTED_BY
UNWIND $rows AS row
MATCH (:IP {ip: row.src})-[r:ROUTED_BY]->(:ASN {asn: row.dst})
DELETE r;

// :name unload_node_Account
UNWIND $keys AS key MATCH (n:Account {account_id: key}) DETACH DELETE n;

// :name unload_node_PaymentInstrument
UNWIND $keys AS key MATCH (n:PaymentInstrument {instrument_id: key}) DETACH DELETE n;

// :name unload_node_IP
UNWIND $keys AS key MATCH (n:IP {ip: key}) DETACH DELETE n;

// :name unload_node_Subnet
UNWIND $keys AS key MATCH (n:Subnet {subnet: key}) DETACH DELETE n;

// :name unload_node_ASN
UNWIND $keys AS key MATCH (n:ASN {asn: key}) DETACH DELETE n;

// :name unload_node_Device
UNWIND $keys AS key MATCH (n:Device {device_id: key}) DETACH DELETE n;

// :name unload_node_PromptTemplate
UNWIND $keys AS key MATCH (n:PromptTemplate {template_id: key}) DETACH DELETE n;

// :name unload_node_Org
UNWIND $keys AS key MATCH (n:Org {org_id: key}) DETACH DELETE n;

// :name unload_node_EmailDomain
UNWIND $keys AS key MATCH (n:EmailDomain {domain: key}) DETACH DELETE n;

// :name unload_node_Model
UNWIND $keys AS key MATCH (n:Model {model: key}) DETACH DELETE n;

// :name clear_graph
// A full load starts from an empty graph (rings go with their accounts); in batches, so that a
// graph of millions of nodes never needs one huge transaction.
MATCH (n)
WHERE n:Account OR n:PaymentInstrument OR n:IP OR n:Subnet OR n:ASN OR n:Device OR n:PromptTemplate
   OR n:Org OR n:EmailDomain OR n:Model OR n:Ring OR n:Run
CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS;
