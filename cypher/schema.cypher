// Uniqueness constraints (each also creates the index MERGE needs) for every node label,
// and indexes for the properties investigators filter on. Idempotent: IF NOT EXISTS.
CREATE CONSTRAINT account_id IF NOT EXISTS FOR (n:Account) REQUIRE n.account_id IS UNIQUE;
CREATE CONSTRAINT instrument_id IF NOT EXISTS FOR (n:PaymentInstrument) REQUIRE n.instrument_id IS UNIQUE;
CREATE CONSTRAINT ip IF NOT EXISTS FOR (n:IP) REQUIRE n.ip IS UNIQUE;
CREATE CONSTRAINT subnet IF NOT EXISTS FOR (n:Subnet) REQUIRE n.subnet IS UNIQUE;
CREATE CONSTRAINT asn IF NOT EXISTS FOR (n:ASN) REQUIRE n.asn IS UNIQUE;
CREATE CONSTRAINT device_id IF NOT EXISTS FOR (n:Device) REQUIRE n.device_id IS UNIQUE;
CREATE CONSTRAINT template_id IF NOT EXISTS FOR (n:PromptTemplate) REQUIRE n.template_id IS UNIQUE;
CREATE CONSTRAINT org_id IF NOT EXISTS FOR (n:Org) REQUIRE n.org_id IS UNIQUE;
CREATE CONSTRAINT email_domain IF NOT EXISTS FOR (n:EmailDomain) REQUIRE n.domain IS UNIQUE;
CREATE CONSTRAINT model IF NOT EXISTS FOR (n:Model) REQUIRE n.model IS UNIQUE;
CREATE CONSTRAINT ring_id IF NOT EXISTS FOR (n:Ring) REQUIRE n.ring_id IS UNIQUE;
CREATE CONSTRAINT run_id IF NOT EXISTS FOR (n:Run) REQUIRE n.run_id IS UNIQUE;
CREATE INDEX ring_flagged IF NOT EXISTS FOR (n:Ring) ON (n.flagged);
CREATE INDEX ring_score IF NOT EXISTS FOR (n:Ring) ON (n.score);
CREATE INDEX ip_type IF NOT EXISTS FOR (n:IP) ON (n.ip_type);
CREATE INDEX account_org IF NOT EXISTS FOR (n:Account) ON (n.org_id);
CREATE CONSTRAINT linkage_lock IF NOT EXISTS FOR (n:LinkageLock) REQUIRE n.name IS UNIQUE;
