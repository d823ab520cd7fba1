#!/usr/bin/env bash
# tools/lib/cost_tables.py, the tables of tools/validate_cost_model.sh: the run-to-run noise
# floor of repeated grids on made-up errors whose answer is known (errors that repeat exactly:
# no scatter; a fixed bias per configuration with +-5% from grid to grid: a scatter of 7.1%
# that a model without bias could not get under 5%; one grid: no answer), and bad usage ends
# with one line and exit 2.
set -uo pipefail
source "$(dirname "$0")/lib_mpi.bash"
SRC=${MPSL_SOURCE_DIR:-$(cd "$HERE/../.." && pwd)}
TABLES="$SRC/tools/lib/cost_tables.py"

if out=$($PY - "$SRC/tools/lib" << 'PY'
import math, sys
sys.path.insert(0, sys.argv[1])
from cost_tables import noise_floor
# The same error in every grid (a bias, no scatter): nothing left for noise.
same = [[0.03 * c - 0.5] * 4 for c in range(36)]
scatter, pairs, median, lo, hi, share = noise_floor(same)
assert pairs == 36 * 6 and scatter == 0 and median == 0 and share == 1, (scatter, median, share)
# Each configuration its own bias, then +5% in even grids and -5% in odd ones: pairs differ by 0
# or 10 points (scatter 10 / sqrt 2), residuals are +-5% stretched by sqrt(4/3).
split = [[0.02 * c + (0.05 if g % 2 == 0 else -0.05) for g in range(4)] for c in range(36)]
scatter, pairs, median, lo, hi, share = noise_floor(split)
assert abs(scatter - 0.10 / math.sqrt(2)) < 1e-9, scatter
want = 0.05 * math.sqrt(4 / 3)
assert all(abs(x - want) < 1e-9 for x in (median, lo, hi)) and share == 0, (median, lo, hi, share)
# One grid: no pairs, no answer.
assert noise_floor([[0.1]] * 36) is None
print(f"no scatter -> 0; +-5% between grids -> scatter {100 * scatter:.2f}%, a bias-free grid "
      f"{100 * median:.2f}%, within 5% in {100 * share:.0f}% of grids; one grid -> none")
PY
); then
  pass "noise floor: $out"
else
  fail "noise floor: $out"
fi

err_file=$(mktemp)
$PY "$TABLES" repeated /no/such/grid > /dev/null 2> "$err_file"
rc=$?
if [ "$rc" = 2 ] && [ "$(wc -l < "$err_file")" = 1 ] && grep -q "no such file or folder: /no/such/grid" "$err_file"; then
  pass "a missing grid folder: one line naming it, exit 2"
else
  fail "missing grid folder: exit $rc: $(cat "$err_file")"
fi
$PY "$TABLES" sideways > /dev/null 2> "$err_file"
rc=$?
if [ "$rc" = 2 ] && [ "$(wc -l < "$err_file")" = 1 ] && grep -q "sideways" "$err_file"; then
  pass "an unknown table: one line naming it, exit 2"
else
  fail "unknown table: exit $rc: $(cat "$err_file")"
fi
rm -f "$err_file"
summary
