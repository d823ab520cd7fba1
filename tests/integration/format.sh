#!/usr/bin/env bash
# The C++ sources are formatted as .clang-format says (the style rule of DESIGN.md): every
# header and source under include, src and tests, checked with clang-format --dry-run --Werror.
# Reformat with: clang-format -i $(find include src tests -name '*.[ch]pp')
set -uo pipefail
source "$(dirname "$0")/lib_mpi.bash"
SRC=${MPSL_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
if ! command -v clang-format > /dev/null; then
  echo "skip: clang-format is not installed (tools/install-deps.sh installs it)"
  exit 77
fi
mapfile -t files < <(cd "$SRC" && find include src tests -name '*.cpp' -o -name '*.hpp' | sort)
bad=()
for f in "${files[@]}"; do
  (cd "$SRC" && clang-format --dry-run --Werror "$f" > /dev/null 2>&1) || bad+=("$f")
done
if [ "${#files[@]}" -gt 50 ] && [ "${#bad[@]}" = 0 ]; then
  pass "${#files[@]} C++ files formatted as .clang-format says"
else
  fail "${#bad[@]} of ${#files[@]} files need clang-format -i: ${bad[*]}"
fi
summary
