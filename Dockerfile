# linkage in a container. Not built or tested where linkage is developed (no Docker there);
# see docs/neo4j.md and compose.yaml.
FROM python:3.11-slim

WORKDIR /opt/linkage
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY linkage ./linkage
COPY cypher ./cypher
# the compiled loops are cached where the runtime user can read and extend them, and compiled once
# here (linkage warm-up, ~25 s) instead of in every container's first run
ENV NUMBA_CACHE_DIR=/opt/linkage/numba-cache
RUN pip install --no-cache-dir --no-deps . && useradd --system --home /data linkage \
    && linkage warm-up && chown -R linkage /opt/linkage/numba-cache
USER linkage
WORKDIR /data
ENTRYPOINT ["linkage"]
CMD ["--help"]
