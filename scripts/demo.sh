#!/usr/bin/env bash
# The first thing to run: installs the dependencies, builds the binaries, starts a local 2-stage
# cluster with the bundled demo model (configs/local-2stage.yaml), streams one chat answer through
# the router's OpenAI-compatible API, prints a short summary and stops the cluster again.
#
# Environment: BUILD_DIR (default build), HTTP_PORT (router HTTP port, default 8080),
# PROMPT (default "Tell me about Mr. Darcy."), CONFIG (default configs/local-2stage.yaml).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_DIR=${BUILD_DIR:-build}
HTTP_PORT=${HTTP_PORT:-8080}
PROMPT=${PROMPT:-"Tell me about Mr. Darcy."}
CONFIG=${CONFIG:-configs/local-2stage.yaml}
PIPEINFER="$BUILD_DIR/bin/pipeinfer"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pipeinfer-demo.XXXXXX")
STATE="$WORK/cluster.json"
cleanup() {
  local rc=$?
  if [[ -f "$STATE" ]]; then
    echo "demo: stopping the cluster"
    "$PIPEINFER" down --state "$STATE" >/dev/null || true
  fi
  if ((rc != 0)); then
    echo "demo: FAILED (exit $rc); process logs are in $WORK/logs" >&2
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== setup"
./scripts/setup.sh

echo "== build ($BUILD_DIR)"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$BUILD_DIR" pipeinfer pipeinfer-stage pipeinfer-draft pipeinfer-router

echo "== start the cluster ($CONFIG)"
"$PIPEINFER" up --config "$CONFIG" --http-port "$HTTP_PORT" --detach --state "$STATE" \
  --log-dir "$WORK/logs"

echo
echo "== chat: $PROMPT"
"$PIPEINFER" chat "$PROMPT" --state "$STATE" --max-tokens 200 2>"$WORK/chat.stderr" || {
  cat "$WORK/chat.stderr" >&2
  exit 1
}

echo
echo "== summary"
model=$(sed -n 's/^model: *\([^ #]*\).*/\1/p' "$CONFIG")
stages=$(sed -n 's/^stages: *\([0-9]*\).*/\1/p' "$CONFIG")
mode=$(sed -n 's/^mode: *\([a-z]*\).*/\1/p' "$CONFIG")
draft=$(sed -n 's/^draft_model: *\([^ #]*\).*/\1/p' "$CONFIG")
echo "model:   $model ($stages stages, $mode mode${draft:+, draft $draft}, 1 thread per stage)"
echo "request: $(tail -n 1 "$WORK/chat.stderr" | tr -d '[]')"
echo "router:  http://127.0.0.1:$HTTP_PORT/v1/chat/completions (OpenAI-compatible)"
