#!/usr/bin/env bash
# Builds the PipeInfer container images offline: no registry is needed, only a Debian mirror.
#
#   deploy/container/build.sh [--git] [--jobs N] [--rebuild-base] [--no-cache]
#
# 1. The base image localhost/pipeinfer-base:bookworm: a minimal Debian 12 root filesystem made
#    from Debian packages with mmdebstrap, then `podman import`ed. Made once; kept while present
#    (--rebuild-base makes it again).
# 2. deploy/container/Containerfile on top of it, tagged localhost/pipeinfer:latest and
#    localhost/pipeinfer:<git short sha> (with "-dirty" when the context has uncommitted changes).
#
#   --git           build the committed tree (git archive HEAD) instead of the working tree
#   --jobs N        compile jobs in the build stage (default: nproc)
#   --rebuild-base  make the base image again
#   --no-cache      no layer cache (the ccache and apt cache mounts are still used)
# Environment: MIRROR (default http://deb.debian.org/debian), SECURITY_MIRROR
# (http://deb.debian.org/debian-security), IMAGE, BASE_IMAGE, NICE (default 10).
# Needs root (podman and mmdebstrap are installed with apt-get when missing).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=common.sh
source "$here/common.sh"

from_git=0
jobs=""
rebuild_base=0
cache_flags=()
while (($#)); do
  case "$1" in
    --git) from_git=1 ;;
    --jobs) jobs=$2; shift ;;
    --rebuild-base) rebuild_base=1 ;;
    --no-cache) cache_flags=(--no-cache) ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
NICE=${NICE:-10}
podman_setup
ensure_debs mmdebstrap

tmp=$(mktemp -d /var/tmp/pipeinfer-image.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
t0=$SECONDS

# --- 1. base image ---------------------------------------------------------------------------
if ((rebuild_base)) || ! "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
  echo "== base: mmdebstrap bookworm (minbase) from $MIRROR"
  # Documentation, manual pages and translations are left out of every package installed in the
  # base and in the images built on it (dpkg path-exclude; copyright files stay).
  # Check-Valid-Until=false: an archive snapshot or caching mirror serves Release files whose
  # Valid-Until date has passed; signatures are still checked. No translations and no
  # pkgcache.bin/srcpkgcache.bin (80 MB per layer that runs apt-get otherwise). The merged-usr
  # hook lays out merged /usr itself, instead of the usrmerge package, which pulls in perl (50 MB).
  nice -n "$NICE" mmdebstrap --variant=minbase --mode=auto \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --aptopt='Acquire::Languages "none"' \
    --aptopt='Dir::Cache::pkgcache ""' \
    --aptopt='Dir::Cache::srcpkgcache ""' \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    bookworm "$tmp/rootfs.tar" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY_MIRROR bookworm-security main"
  "${PODMAN[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.title=pipeinfer-base" \
    --change "LABEL org.opencontainers.image.description=Debian 12 minbase made with mmdebstrap" \
    --change "LABEL org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --message "mmdebstrap --variant=minbase bookworm $MIRROR" \
    "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
  rm -f "$tmp/rootfs.tar"
  echo "== base: $BASE_IMAGE ($((SECONDS - t0)) s)"
else
  echo "== base: $BASE_IMAGE present (--rebuild-base makes it again)"
fi

# --- 2. the images ---------------------------------------------------------------------------
context=$root
sha=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo nogit)
if ((from_git)); then
  context=$tmp/context
  mkdir -p "$context"
  git -C "$root" archive HEAD | tar -x -C "$context"
  # The Containerfile and healthcheck come from the working tree (they may be new).
  mkdir -p "$context/deploy/container"
  cp "$here/Containerfile" "$here/healthcheck.sh" "$context/deploy/container/"
elif [[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  sha="$sha-dirty"
fi

tags=(-t "$IMAGE:latest")
[[ "$sha" != nogit ]] && tags+=(-t "$IMAGE:$sha")
echo "== image: $IMAGE:latest, $IMAGE:$sha (context $context, nice $NICE)"
t1=$SECONDS
nice -n "$NICE" "${PODMAN[@]}" build --format docker "${BUILD_FLAGS[@]}" "${LIMIT_FLAGS[@]}" "${cache_flags[@]}" \
  --network host \
  -f "$here/Containerfile" "${tags[@]}" \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --build-arg "JOBS=$jobs" \
  --build-arg "REVISION=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)" \
  --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  "$context"
build_s=$((SECONDS - t1))

bytes=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE:latest")
base_bytes=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$BASE_IMAGE")
echo "== built $IMAGE:latest in ${build_s} s (total $((SECONDS - t0)) s)"
echo "image size: $IMAGE:latest $((bytes / 1000000)) MB (${bytes} bytes; base $((base_bytes / 1000000)) MB)"
