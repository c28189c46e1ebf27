# shellcheck shell=bash disable=SC2034  # the variables set here are used by the sourcing scripts
# Shared by build.sh and smoke.sh (sourced, not run): the image names and the podman flags that
# make podman work in restricted hosts such as this project's sandbox. Every workaround is
# harmless on an ordinary host; deploy/container/README.md explains each one.

IMAGE=${IMAGE:-localhost/pipeinfer}
BASE_IMAGE=${BASE_IMAGE:-localhost/pipeinfer-base:bookworm}

# Installs the Debian packages given as arguments when they are missing (needs root or sudo).
# Only this image path needs them, so scripts/setup.sh does not list them.
ensure_debs() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  echo "container: installing ${missing[*]} (apt-get)"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
}

# A cgroup v1/v2 hybrid host (cgroup v1 controllers on a tmpfs, plus a cgroup2 mount at
# /sys/fs/cgroup/unified that has controllers) makes crun, podman's default runtime on Debian 12,
# refuse every container ("cgroups in hybrid mode not supported"); runc runs there.
hybrid_cgroups() {
  [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) == tmpfs ]] &&
    [[ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ]]
}

# Sets PODMAN (the command with its global flags), LIMIT_FLAGS (for run and build) and
# BUILD_FLAGS (for build: `podman build` ignores the global --runtime, it takes its own).
podman_setup() {
  ensure_debs podman
  PODMAN=(podman)
  BUILD_FLAGS=()
  local runtime=${PODMAN_RUNTIME:-}
  if [[ -z "$runtime" ]] && hybrid_cgroups; then runtime=runc; fi
  if [[ -n "$runtime" ]]; then
    [[ "$runtime" == runc ]] && ensure_debs runc
    PODMAN+=(--runtime "$runtime")
    BUILD_FLAGS+=(--runtime "$runtime")
  fi
  # Rootful podman gives containers nofile=1048576 and nproc=4194304 by default. Raising a hard
  # limit needs CAP_SYS_RESOURCE, which a sandbox may withhold ("setrlimit RLIMIT_NOFILE:
  # Operation not permitted"), and podman itself lowers its nproc limit to 32768 before it starts
  # the runtime. So containers get this shell's hard limits instead, nproc capped at 32768.
  local nofile nproc
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  [[ "$nofile" == unlimited ]] && nofile=1048576
  if [[ "$nproc" == unlimited ]] || ((nproc > 32768)); then nproc=32768; fi
  LIMIT_FLAGS=(--ulimit "nofile=${nofile}:${nofile}" --ulimit "nproc=${nproc}:${nproc}")
}
