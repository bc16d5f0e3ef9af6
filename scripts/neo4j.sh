#!/usr/bin/env bash
# A real Neo4j Community 5.26 server, assembled from Maven Central (no Docker, no other download
# host), run on loopback with a generated password and its store under .neo4j/ (git-ignored).
#   scripts/neo4j.sh start | stop | status | admin ARGS… (neo4j-admin)
set -euo pipefail
cd "$(dirname "$0")/.."
HOME_DIR="$PWD/.neo4j"
LIB="$HOME_DIR/lib"
PORT="${LINKAGE_NEO4J_PORT:-17687}"
HTTP_PORT="${LINKAGE_NEO4J_HTTP_PORT:-$((PORT - 213))}"  # 17474 beside Bolt's 17687: Neo4j Browser
PYTHON="${PYTHON:-.venv/bin/python}"

fetch() {
  # the jars of this pom: fetched again when the pom changes
  local want; want=$(sha256sum neo4j/pom.xml | cut -d' ' -f1)
  if [ -f "$LIB/.complete" ] && [ "$(cat "$LIB/.complete")" = "$want" ]; then return; fi
  rm -rf "$LIB"
  mkdir -p "$LIB"
  echo "neo4j: resolving the server's jars from Maven Central (once)…" >&2
  mvn -q -B -Dstyle.color=never -f neo4j/pom.xml dependency:copy-dependencies -DoutputDirectory="$LIB" -DincludeScope=runtime
  echo "$want" > "$LIB/.complete"
}

configure() {
  mkdir -p "$HOME_DIR/conf" "$HOME_DIR/data" "$HOME_DIR/logs" "$HOME_DIR/run" "$HOME_DIR/import"
  cat > "$HOME_DIR/conf/neo4j.conf" <<CONF
server.default_listen_address=127.0.0.1
server.bolt.listen_address=127.0.0.1:$PORT
server.bolt.advertised_address=127.0.0.1:$PORT
server.http.enabled=true
server.http.listen_address=127.0.0.1:$HTTP_PORT
server.http.advertised_address=127.0.0.1:$HTTP_PORT
server.https.enabled=false
server.directories.data=$HOME_DIR/data
server.directories.logs=$HOME_DIR/logs
server.directories.run=$HOME_DIR/run
# queries cannot read the server's files: LOAD CSV is confined to an empty import folder, and
# file:/// URLs are refused outright (linkage loads through the driver and neo4j-admin, not LOAD CSV)
server.directories.import=$HOME_DIR/import
dbms.security.allow_csv_import_from_file_urls=false
server.memory.heap.initial_size=1g
server.memory.heap.max_size=2g
server.memory.pagecache.size=1g
dbms.usage_report.enabled=false
dbms.security.auth_enabled=true
db.transaction.timeout=10m
CONF
}

running() {
  [ -f "$HOME_DIR/neo4j.pid" ] && kill -0 "$(cat "$HOME_DIR/neo4j.pid")" 2>/dev/null
}

start() {
  if running; then echo "neo4j: already running (pid $(cat "$HOME_DIR/neo4j.pid"))" >&2; return; fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "neo4j: port $PORT is taken by another process; set LINKAGE_NEO4J_PORT" >&2; exit 1
  fi
  fetch
  configure
  nohup java -Xms1g -Xmx2g -XX:+UseG1GC \
    --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED \
    --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/java.lang=ALL-UNNAMED \
    --enable-native-access=ALL-UNNAMED -Dio.netty.tryReflectionSetAccessible=true \
    -cp "$LIB/*" org.neo4j.server.CommunityEntryPoint \
    --home-dir="$HOME_DIR" --config-dir="$HOME_DIR/conf" > "$HOME_DIR/logs/console.log" 2>&1 &
  echo $! > "$HOME_DIR/neo4j.pid"
  # the first start has the default password; a generated one is set and kept in .neo4j/env
  if [ ! -f "$HOME_DIR/password" ]; then
    "$PYTHON" -c "import secrets; print(secrets.token_urlsafe(18))" > "$HOME_DIR/password"
    chmod 600 "$HOME_DIR/password"
  fi
  "$PYTHON" scripts/neo4j_ready.py "bolt://127.0.0.1:$PORT" "$HOME_DIR/password" || {
    echo "neo4j: did not come up; see $HOME_DIR/logs/neo4j.log" >&2; tail -20 "$HOME_DIR/logs/neo4j.log" >&2 || true; exit 1; }
  umask 077
  cat > "$HOME_DIR/env" <<ENV
NEO4J_URI=bolt://127.0.0.1:$PORT
NEO4J_USERNAME=neo4j
NEO4J_PASSWORD=$(cat "$HOME_DIR/password")
NEO4J_DATABASE=neo4j
NEO4J_BROWSER_URL=http://127.0.0.1:$HTTP_PORT/browser/
ENV
  echo "neo4j: up on bolt://127.0.0.1:$PORT, Neo4j Browser on http://127.0.0.1:$HTTP_PORT/browser/ (settings in .neo4j/env)" >&2
}

stop() {
  if ! running; then echo "neo4j: not running" >&2; rm -f "$HOME_DIR/neo4j.pid"; return; fi
  pid=$(cat "$HOME_DIR/neo4j.pid")
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" || true
  rm -f "$HOME_DIR/neo4j.pid"
  echo "neo4j: stopped" >&2
}

admin() {
  # neo4j-admin of the same server build (e.g. `admin database import full …`; stop the server first)
  fetch
  configure
  NEO4J_HOME="$HOME_DIR" NEO4J_CONF="$HOME_DIR/conf" exec java -Xmx2g -cp "$LIB/*" org.neo4j.cli.AdminTool "$@"
}

case "${1:-}" in
  start) start ;;
  admin) shift; admin "$@" ;;
  stop) stop ;;
  status) if running; then echo "running"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status|admin ARGS…" >&2; exit 2 ;;
esac
