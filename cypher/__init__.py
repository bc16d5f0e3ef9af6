"""The Cypher files (schema, loads, the investigators' named queries), shipped as package data."""
