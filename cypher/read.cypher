// Read the whole graph back, label by label and type by type, for detection from the store.
// Timestamps come back as epoch milliseconds so that the tables match the embedded ones.

// :name read_Account
MATCH (n:Account) RETURN n {.*, created_at: n.created_at.epochMillis, first_seen: n.first_seen.epochMillis, last_seen: n.last_seen.epochMillis} AS row;

// :name read_PaymentInstrument
MATCH (n:PaymentInstrument) RETURN n {.*} AS row;

// :name read_IP
MATCH (n:IP) RETURN n {.*} AS row;

// :name read_Subnet
MATCH (n:Subnet) RETURN n {.*} AS row;

// :name read_ASN
MATCH (n:ASN) RETURN n {.*} AS row;

// :name read_Device
MATCH (n:Device) RETURN n {.*} AS row;

// :name read_PromptTemplate
MATCH (n:PromptTemplate) RETURN n {.*} AS row;

// :name read_Org
MATCH (n:Org) RETURN n {.*} AS row;

// :name read_EmailDomain
MATCH (n:EmailDomain) RETURN n {.*} AS row;

// :name read_Model
MATCH (n:Model) RETURN n {.*} AS row;

// :name read_PAID_WITH
MATCH (a:Account)-[r:PAID_WITH]->(b:PaymentInstrument)
RETURN {src: a.account_id, dst: b.instrument_id, count: r.count,
        first_seen: r.first_seen.epochMillis, last_seen: r.last_seen.epochMillis} AS row;

// :name read_USED_IP
MATCH (a:Account)-[r:USED_IP]->(b:IP)
RETURN {src: a.account_id, dst: b.ip, count: r.count,
        first_seen: r.first_seen.epochMillis, last_seen: r.last_seen.epochMillis} AS row;

// :name read_SIGNED_UP_FROM
MATCH (a:Account)-[r:SIGNED_UP_FROM]->(b:IP)
RETURN {src: a.account_id, dst: b.ip, count: r.count,
        first_seen: r.first_seen.epochMillis, last_seen: r.last_seen.epochMillis} AS row;

// :name read_USED_DEVICE
MATCH (a:Account)-[r:USED_DEVICE]->(b:Device)
RETURN {src: a.account_id, dst: b.device_id, count: r.count,
        first_seen: r.first_seen.epochMillis, last_seen: r.last_seen.epochMillis} AS row;

// :name read_SENT_TEMPLATE
MATCH (a:Account)-[r:SENT_TEMPLATE]->(b:PromptTemplate)
RETURN {src: a.account_id, dst: b.template_id, count: r.count,
        first_seen: r.first_seen.epochMillis, last_seen: r.last_seen.epochMillis} AS row;

// :name read_IN_ORG
MATCH (a:Account)-[r:IN_ORG]->(b:Org)
RETURN {src: a.account_id, dst: b.org_id, count: r.count,
        first_seen: r.first_seen.epochMillis, last_seen: r.last_seen.epochMillis} AS row;

// :name read_HAS_EMAIL_DOMAIN
MATCH (a:Account)-[r:HAS_EMAIL_DOMAIN]->(b:EmailDomain)
RETURN {src: a.account_id, dst: b.domain, count: r.count,
        first_seen: r.first_seen.epochMillis, last_seen: r.last_seen.epochMillis} AS row;

// :name read_USED_MODEL
MATCH (a:Account)-[r:USED_MODEL]->(b:Model)
RETURN {src: a.account_id, dst: b.model, count: r.count,
        first_seen: r.first_seen.epochMillis, last_seen: r.last_seen.epochMillis} AS row;

// :name read_IN_SUBNET
MATCH (a:IP)-[r:IN_SUBNET]->(b:Subnet)
RETURN {src: a.ip, dst: b.subnet, count: r.count,
        first_seen: r.first_seen.epochMillis, last_seen: r.last_seen.epochMillis} AS row;

// :name read_ROUTED_BY
MATCH (a:IP)-[r:ROUTED_BY]->(b:ASN)
RETURN {src: a.ip, dst: b.asn, count: r.count,
        first_seen: r.first_seen.epochMillis, last_seen: r.last_seen.epochMillis} AS row;
