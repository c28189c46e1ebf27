#!/usr/bin/env bash
# Installs the Debian packages the project needs to build and test. Idempotent: packages that are
# already installed are skipped; the ones it installs are printed. Needs root (or sudo).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git curl
  clang clang-format libclang-rt-dev
  libgrpc++-dev libgrpc-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev grpc-proto
  libabsl-dev prometheus-cpp-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libcpp-httplib-dev nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libspdlog-dev libfmt-dev
  prometheus
  iproute2  # ss: router_limits_test reads the router's listen backlog; ip, tc: link emulation
  python3-matplotlib  # bench/plots.py: the scenario runner's PNG plots
  openssl libssl-dev  # `pipeinfer up --tls` makes its CA with the openssl CLI; HTTPS (cpp-httplib)
)
if [[ "${1:-}" == "--list" ]]; then
  printf '%s\n' "${PACKAGES[@]}"
  exit 0
fi
# Test tools that may come from elsewhere (google-cloud-sdk's kubectl, NodeSource's node): their
# Debian package is added only when the command is missing, and --list leaves them out (the
# container build needs none). tests/deploy renders deploy/k8s with `kubectl kustomize`
# (kubernetes-client: kubectl 1.20 with kustomize v2.0.3, which the manifests stay compatible with)
# and validates the renders with npm packages (nodejs, npm).
if ! command -v kubectl >/dev/null; then PACKAGES+=(kubernetes-client); fi
if ! command -v node >/dev/null; then PACKAGES+=(nodejs); fi
if ! command -v npm >/dev/null; then PACKAGES+=(npm); fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
