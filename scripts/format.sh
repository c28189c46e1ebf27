#!/usr/bin/env bash
# Checks (default) or applies (--fix) clang-format on every C++ file of the project.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files --cached --others --exclude-standard -- \
  '*.cc' '*.h' '*.cpp' '*.hpp' '*.cu' '*.cuh' | grep -v '^tests/fixtures/')
if [[ "${1:-}" == "--fix" ]]; then
  clang-format -i "${files[@]}"
  echo "formatted ${#files[@]} files"
  exit 0
fi
bad=0
for f in "${files[@]}"; do
  if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
    echo "needs formatting: $f"
    bad=1
  fi
done
if ((bad)); then
  echo "run ./scripts/format.sh --fix"
  exit 1
fi
echo "format ok (${#files[@]} files)"
