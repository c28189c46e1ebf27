#!/usr/bin/env bash
# Smoke test of the image built by build.sh: inside one container, the image's default command
# starts a 2-stage cluster on the bundled demo model (`pipeinfer up` with
# /opt/pipeinfer/configs/local-2stage.yaml: 2 stages, draft service, router); the test waits for
# the image's HEALTHCHECK to pass and completes one chat. Exits non-zero on any failure and
# removes its container in every case.
#
#   deploy/container/smoke.sh [IMAGE]        (default localhost/pipeinfer:latest)
#
# SMOKE_NETWORK=none (default): the container has its own network namespace with loopback only,
#   so its ports never collide with the host; the chat runs in the container (`pipeinfer chat`).
# SMOKE_NETWORK=host: host network on free ports; the chat is also sent with curl from the host
#   to the router's OpenAI-compatible /v1/chat/completions.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
source "$here/common.sh"
podman_setup

image=${1:-$IMAGE:latest}
network=${SMOKE_NETWORK:-none}
timeout_s=${SMOKE_TIMEOUT:-180}
name="pipeinfer-smoke-$$"

noise=/dev/null
fail() {
  echo "smoke: FAIL: $*" >&2
  echo "---- podman messages" >&2
  cat "$noise" >&2 || true
  echo "---- container log" >&2
  "${PODMAN[@]}" logs "$name" >&2 2>&1 || true
  echo "---- cluster logs" >&2
  "${PODMAN[@]}" exec "$name" sh -c 'tail -n 30 /tmp/pipeinfer-10001/logs/* 2>/dev/null' >&2 || true
  exit 1
}
cleanup() { "${PODMAN[@]}" rm -f -t 5 "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

# Static properties of the image.
user=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$image")
[[ "$user" == 10001* ]] || fail "image user is '$user', expected 10001"
health=$("${PODMAN[@]}" image inspect --format '{{json .Config.Healthcheck}}' "$image")
[[ "$health" == *pipeinfer-healthcheck* ]] || fail "image has no HEALTHCHECK ($health)"
title=$("${PODMAN[@]}" image inspect \
  --format '{{index .Config.Labels "org.opencontainers.image.title"}}' "$image")
[[ "$title" == pipeinfer ]] || fail "OCI label org.opencontainers.image.title is '$title'"
echo "smoke: image $image: user $user, HEALTHCHECK and OCI labels present"

cmd=()  # empty: the image's default command
http=127.0.0.1:8080
net_flags=(--network none)
if [[ "$network" == host ]]; then
  net_flags=(--network host)
  # Nine consecutive free ports: router HTTP, router gRPC, 2 stages + draft, 2 stage metrics.
  for _ in $(seq 50); do
    b=$((20000 + RANDOM % 40000))
    busy=$(ss -Htln | awk '{print $4}' | sed 's/.*://' | awk -v b="$b" '$1 >= b && $1 < b + 9')
    [[ -z "$busy" ]] && break
  done
  http=127.0.0.1:$b
  cmd=(pipeinfer up --config /opt/pipeinfer/configs/local-2stage.yaml --http-port "$b"
       --grpc-port $((b + 1)) --base-port $((b + 2)) --metrics-base-port $((b + 5)))
elif [[ "$network" != none ]]; then
  echo "smoke: SMOKE_NETWORK must be none or host" >&2
  exit 2
fi

# Without systemd on the host, podman cannot schedule the periodic healthcheck (a systemd timer)
# and logs an error on run and on stop, which is harmless: the test runs the check itself with
# `podman healthcheck run`. That noise goes to a file, shown only when the test fails.
noise=$(mktemp)
trap 'cleanup; rm -f "$noise"' EXIT
"${PODMAN[@]}" run -d --name "$name" "${LIMIT_FLAGS[@]}" "${net_flags[@]}" \
  -e "PIPEINFER_HEALTH_ADDR=$http" "$image" "${cmd[@]}" >/dev/null 2>"$noise" ||
  { cat "$noise" >&2; fail "podman run failed"; }
echo "smoke: started $name (network $network)"

t0=$SECONDS
until "${PODMAN[@]}" healthcheck run "$name" >/dev/null 2>&1; do
  state=$("${PODMAN[@]}" inspect --format '{{.State.Status}}' "$name" 2>/dev/null || echo gone)
  [[ "$state" == running ]] || fail "container is $state before it became healthy"
  ((SECONDS - t0 < timeout_s)) || fail "not healthy after ${timeout_s} s"
  sleep 2
done
echo "smoke: healthy after $((SECONDS - t0)) s"

# No compiler in the runtime image, and the processes run as uid 10001.
if "${PODMAN[@]}" exec "$name" sh -c 'command -v cc || command -v gcc || command -v c++ || command -v g++'
then
  fail "a compiler is installed in the runtime image"
fi
# shellcheck disable=SC2016  # expanded by the shell in the container
uids=$("${PODMAN[@]}" exec "$name" sh -c \
  'for p in /proc/[0-9]*; do awk "/^Uid:/ {print \$2}" $p/status; done | sort -u' | tr '\n' ' ')
[[ "$uids" == "10001 " ]] || fail "processes run as uids '$uids', expected only 10001"
procs=$("${PODMAN[@]}" exec "$name" sh -c 'cat /proc/[0-9]*/comm | sort | uniq -c' |
        tr -s ' \n' ' ')
echo "smoke: processes (uid 10001):$procs"

answer=$("${PODMAN[@]}" exec "$name" timeout 120 pipeinfer chat --router-http "$http" \
  --max-tokens 24 --temperature 0 "Tell me a short story.") || fail "pipeinfer chat failed"
[[ -n "${answer//[[:space:]]/}" ]] || fail "pipeinfer chat returned an empty answer"
echo "smoke: pipeinfer chat answered: ${answer}"

if [[ "$network" == host ]]; then
  model=$(curl -fsS "http://$http/v1/models" | grep -o '"id" *: *"[^"]*"' | head -1 |
          sed 's/.*"\([^"]*\)"$/\1/') || fail "GET /v1/models failed"
  body=$(printf '{"model":"%s","messages":[{"role":"user","content":"Hello"}],"max_tokens":16,"temperature":0}' "$model")
  reply=$(curl -fsS -m 120 -H 'Content-Type: application/json' -d "$body" \
          "http://$http/v1/chat/completions") || fail "curl /v1/chat/completions failed"
  [[ "$reply" == *'"content"'* ]] || fail "unexpected reply: $reply"
  echo "smoke: curl /v1/chat/completions (model $model): $reply"
fi

# A clean stop: SIGTERM to `pipeinfer up` stops the whole cluster.
"${PODMAN[@]}" stop -t 30 "$name" >/dev/null 2>>"$noise"
code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$name")
echo "smoke: container stopped (exit code $code)"
echo "smoke: PASS"
