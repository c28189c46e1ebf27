#!/usr/bin/env bash
# CTest deploy_k8s_manifests_test: renders deploy/k8s (base + every overlay) with
# `kubectl kustomize` and validates the objects with validate_manifests.mjs against the Kubernetes
# OpenAPI schemas (npm kubernetes-models) and the Prometheus Operator CRDs
# (@kubernetes-models/prometheus-operator). The npm packages are installed from the committed
# package-lock.json into .cache/npm-deploy (gitignored) with `npm ci`, again only when the lock
# file changes. Needs kubectl, node and npm (scripts/setup.sh installs them).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${PIPEINFER_NPM_DEPLOY_CACHE:-$repo/.cache/npm-deploy}

for tool in kubectl node npm; do
  if ! command -v "$tool" >/dev/null; then
    echo "k8s_manifests_test: $tool not found; run scripts/setup.sh" >&2
    exit 1
  fi
done
echo "kubectl: $(kubectl version --client 2>/dev/null | head -n 2 | tr '\n' ' ')"

mkdir -p "$cache"
want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
(
  flock 9
  if [[ "$(cat "$cache/.lock-sha256" 2>/dev/null)" != "$want" || ! -d "$cache/node_modules" ]]; then
    cp "$here/package.json" "$here/package-lock.json" "$cache/"
    echo "installing the validator into $cache (npm ci)"
    (cd "$cache" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$cache/.lock-sha256"
  fi
) 9>"$cache/.install.lock"

exec node "$here/validate_manifests.mjs" --kubectl "$(command -v kubectl)" --repo "$repo" \
  --modules "$cache/node_modules"
