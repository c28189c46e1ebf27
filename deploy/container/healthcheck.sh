#!/bin/bash
# Container HEALTHCHECK: healthy when the router answers GET /health with 200. Plain bash
# (/dev/tcp), so the runtime image needs no curl. The address comes from PIPEINFER_HEALTH_ADDR
# (HOST:PORT, default 127.0.0.1:8080, the router of the default `pipeinfer up` command).
set -u
addr=${PIPEINFER_HEALTH_ADDR:-127.0.0.1:8080}
host=${addr%:*}
port=${addr##*:}
exec 3<>"/dev/tcp/${host}/${port}" || exit 1
printf 'GET /health HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$addr" >&3
read -r -t 2 _ status _ <&3 || exit 1
[[ "$status" == "200" ]]
