#!/usr/bin/env bash
# The local data plane: two reference model-server replicas (revisions v1 and v2) behind the
# router, from examples/routes.yaml. Ctrl-C stops all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
"$py" examples/model_server.py --port 9001 --revision v1 & pids+=($!)
"$py" examples/model_server.py --port 9002 --revision v2 & pids+=($!)
export SLUICE_ADMIN_TOKEN=${SLUICE_ADMIN_TOKEN:-$("$py" -c 'import secrets; print(secrets.token_hex(16))')}
echo "admin token for PUT /routes: $SLUICE_ADMIN_TOKEN" >&2
cat >&2 <<TXT
try:
  curl -s localhost:8080/v2/models/model/infer -d '{"inputs":[{"name":"input-0","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
  curl -s localhost:8081/stats
TXT
"$py" -m router.main --config examples/routes.yaml --listen 127.0.0.1:8080 \
  --admin-listen 127.0.0.1:8081 & pids+=($!)
wait "${pids[-1]}"
