#!/usr/bin/env bash
# CTest browser_pages_test (label browser; not in scripts/test.sh's default run):
#   tests/browser/browser_test.sh [BUILD_DIR] [OUT_DIR]
# Starts a real local cluster from BUILD_DIR (default build/): `pipeinfer up --detach` with
# configs/local-2stage.yaml (the demo models), mode pipeinfer, free ports, and stage passes padded
# to 20 ms (--emulate-run-us) so that runs take visible time. Then pages_test.mjs drives Debian's
# Chromium through playwright-core over the router's pages (/ and /pipeline) and saves chat.png and
# pipeline.png in OUT_DIR (default tests/browser/out/, gitignored), with the cluster's logs in
# OUT_DIR/logs. The cluster and the browser are stopped on every exit.
# Installs what is missing: the chromium package (apt-get, root or sudo) and the npm packages from
# the committed package-lock.json into .cache/npm-browser (gitignored; npm ci, again only when the
# lock file changes).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=$(cd "${1:-$repo/build}" && pwd)
out=${2:-$here/out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cache=${PIPEINFER_NPM_BROWSER_CACHE:-$repo/.cache/npm-browser}
chromium=/usr/bin/chromium
stages=2

for tool in node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "browser_test: $tool not found; run scripts/setup.sh" >&2
    exit 1
  fi
done
if [[ ! -x "$build/bin/pipeinfer" ]]; then
  echo "browser_test: $build/bin/pipeinfer not found; build first" >&2
  exit 1
fi

# Debian's Chromium.
if [[ ! -x "$chromium" ]]; then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  echo "browser_test: installing chromium with apt-get; these packages:"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -s --no-install-recommends chromium |
    awk '/^Inst /{print "  " $2 " " $3}'
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
echo "chromium: $("$chromium" --version 2>/dev/null)"

# playwright-core, pinned by package-lock.json.
mkdir -p "$cache"
want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
(
  flock 9
  if [[ "$(cat "$cache/.lock-sha256" 2>/dev/null)" != "$want" || ! -d "$cache/node_modules" ]]; then
    cp "$here/package.json" "$here/package-lock.json" "$cache/"
    echo "installing playwright-core into $cache (npm ci)"
    (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$cache/.lock-sha256"
  fi
) 9>"$cache/.install.lock"

# Free ports: a block of 8 consecutive ones (stages, draft service, router gRPC, router HTTP,
# stage metrics), probed by binding each.
base=$(node -e '
  const net = require("node:net");
  const free = (p) => new Promise((res) => {
    const s = net.createServer().once("error", () => res(false))
      .listen({ port: p, host: "127.0.0.1", exclusive: true }, () => s.close(() => res(true)));
  });
  (async () => {
    for (let tries = 0; tries < 50; tries++) {
      const b = 20000 + Math.floor(Math.random() * 4000) * 10;
      let ok = true;
      for (let p = b; p < b + 8 && ok; p++) ok = await free(p);
      if (ok) { console.log(b); return; }
    }
    process.exit(1);
  })();')
grpc_port=$((base + stages + 1))
http_port=$((base + stages + 2))
metrics_port=$((base + stages + 3))

work=$(mktemp -d "${TMPDIR:-/tmp}/pipeinfer-browser.XXXXXX")
state="$work/cluster.json"
cleanup() {
  local rc=$?
  if [[ -f "$state" ]]; then
    echo "== pipeinfer down"
    "$build/bin/pipeinfer" down --state "$state" || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== pipeinfer up (ports $base..$((base + 7)), router http://127.0.0.1:$http_port/)"
rm -rf "$out/logs"
"$build/bin/pipeinfer" up --detach --config "$repo/configs/local-2stage.yaml" --stages "$stages" \
  --mode pipeinfer --emulate-run-us 20000 --concurrency 4 \
  --base-port "$base" --grpc-port "$grpc_port" --http-port "$http_port" \
  --metrics-base-port "$metrics_port" --state "$state" --log-dir "$out/logs"

echo "== pages_test.mjs"
node "$here/pages_test.mjs" --base-url "http://127.0.0.1:$http_port" --out "$out" \
  --modules "$cache/node_modules" --stages "$stages" --chromium "$chromium"
