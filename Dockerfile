# linkage in a container. Not built or tested where linkage is developed (no Docker there);
# see docs/neo4j.md and compose.yaml.
FROM python:3.11-slim

WORKDIR /opt/linkage
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY linkage ./linkage
COPY cypher ./cypher
RUN pip install --no-cache-dir --no-deps . && useradd --system --home /data linkage
USER linkage
WORKDIR /data
ENTRYPOINT ["linkage"]
CMD ["--help"]
