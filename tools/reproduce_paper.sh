#!/usr/bin/env bash
# Reproduces the paper's experiments with emulated devices (README "Reproducing the paper's
# experiments"): runs the four studies of tools/studies/paper-*.toml with tools/study, each
# point beside the cost model's prediction, and writes runs/paper/summary.md (the four tables
# and the median prediction error over every point) next to each study's CSV files and plots.
#
#   tools/reproduce_paper.sh [a] [b] [c] [d]     (default: all four)
#
# Environment: MPSL (default build/mpsl), OUT (default runs/paper). A half-finished
# reproduction resumes: points with a result are skipped (remove runs/paper to start over).
# About 20 minutes on a 2-core machine; keep the machine otherwise idle while it runs, or the
# measured times (not the predictions) grow.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MPSL=${MPSL:-build/mpsl}
OUT=${OUT:-runs/paper}
[ -x "$MPSL" ] || { echo "reproduce_paper: $MPSL is not built (tools/build.sh)" >&2; exit 2; }
declare -A GRID=([a]=paper-a-onehop-vs-multihop [b]=paper-b-multihop-vs-horizontal
                 [c]=paper-c-slow-owners [d]=paper-d-many-owners)
declare -A TITLE=([a]="(a) one hop vs multihop at equal resources (VGG-19, K = 4)"
                  [b]="(b) multihop vs horizontally scaled one hop on 4 cheap nodes (VGG-19, K = 4)"
                  [c]="(c) 30 owners, 0-100% of a class 2.3x slower (fmnist-cnn, N = 2)"
                  [d]="(d) K = 10 to 100 owners (fmnist-cnn, N = 2)")
which=("$@")
[ ${#which[@]} -gt 0 ] || which=(a b c d)
for x in "${which[@]}"; do
  [ -n "${GRID[$x]:-}" ] || { echo "reproduce_paper: unknown experiment '$x' (a, b, c or d)" >&2; exit 2; }
done
status=0
for x in "${which[@]}"; do
  name=${GRID[$x]}
  echo "== ${TITLE[$x]}"
  tools/study run "tools/studies/$name.toml" --mpsl "$MPSL" --out "$OUT/${name#paper-}" || status=1
done
# The summary: every study's table, then the median error over all points.
/usr/bin/python3 - "$OUT" <<'PY'
import csv, os, sys
out = sys.argv[1]
parts, errs = ["# Reproduction of the paper's experiments (tools/reproduce_paper.sh)", ""], []
for name in sorted(os.listdir(out)):
    table = os.path.join(out, name, "table.md")
    if not os.path.exists(table):
        continue
    parts += [f"## {name}", "", open(table).read().strip(), "",
              f"Plots: {os.path.join(out, name, 'plots')}/round_and_memory_vs_*.png, "
              "predicted_vs_measured_round.png, timeline.png", ""]
    with open(os.path.join(out, name, "points.csv")) as f:
        for r in csv.DictReader(f):
            if r["status"] == "ok" and r.get("round_error"):
                errs.append(abs(float(r["round_error"])))
if errs:
    errs.sort()
    n = len(errs)
    med = errs[n // 2] if n % 2 else 0.5 * (errs[n // 2 - 1] + errs[n // 2])
    parts.append(f"**Over all {n} points: median |predicted - measured| / measured round time "
                 f"{100 * med:.1f}% (max {100 * errs[-1]:.1f}%).**")
open(os.path.join(out, "summary.md"), "w").write("\n".join(parts) + "\n")
print("\n".join(parts))
PY
exit $status
