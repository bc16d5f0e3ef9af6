"""The investigators' named queries, one .cypher file each."""
