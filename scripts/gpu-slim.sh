#!/usr/bin/env bash
# A device run (the `device` tool, docs/gpu.md) copies the tracked working tree, which must stay
# under 64 MiB; the models and fixtures alone are ~125 MB. `on` takes models/ and tests/fixtures/
# out of git's index and ignores them for the run (the files stay on disk); the bundle of
# scripts/gpu-bundle.sh carries the fixtures the cuda tests need. `off` puts everything back.
#
#   ./scripts/gpu-slim.sh on | off | size
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=.git/info/exclude
paths=(models tests/fixtures)
case "${1:-}" in
  on)
    git rm -r -q --cached "${paths[@]}"
    for p in "${paths[@]}"; do
      grep -qx "/$p/" "$exclude" 2>/dev/null || echo "/$p/" >> "$exclude"
    done
    ;;
  off)
    git reset -q -- "${paths[@]}"
    for p in "${paths[@]}"; do sed -i "\\|^/$p/\$|d" "$exclude"; done
    ;;
  size) ;;
  *) echo "usage: $0 on|off|size" >&2; exit 2 ;;
esac
# What a device run would carry (tracked + untracked, not ignored) and the bundle beside it.
bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null |
  tail -1 | cut -f1)
echo "working tree that travels: $((bytes / 1024 / 1024)) MiB"
[[ -d .gpu-bundle ]] && du -sh .gpu-bundle
git status --short | head -5
