#!/usr/bin/env bash
# mpsl and PyTorch trained from exactly the same start: the same initial weights (PyTorch's for
# the seed, exported to a model file and given to mpsl with --init-model) and the same batch
# order (mpsl's for the seed, which tools/torch_same_start.py reproduces bit for bit). Whatever
# then differs comes from the arithmetic alone, not from the random streams.
#
#  1. Step by step (first seed): the largest relative weight difference after 1, 5, 10, 20, 40
#     and 100 steps between mpsl and PyTorch (2 threads), beside the same figure for PyTorch on
#     1 thread vs PyTorch on 2 threads: how fast rounding differences alone grow on this task.
#  2. One epoch from the same start, every seed: test accuracy of mpsl, of PyTorch (2 threads)
#     and of PyTorch on 1 thread (the spread that rounding alone causes), and the medians.
#
# Usage: tools/same_start_vs_torch.sh [--seeds "1 2 3"] [--threads N] [--only steps|epoch]
#                                     [--out FILE] [--install]
# About 10 minutes on the 2-core machine. Environment as tools/accuracy_vs_torch.sh.
set -euo pipefail
# shellcheck source=tools/lib/bench_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bench_common.sh"

seeds="1 2 3"
threads=2
out=""
install=0
only=""
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then bc_die "$1 needs a value ('--help' lists the options)"; fi; }
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) need_value "$@"; seeds="${2//,/ }"; shift 2 ;;
    --threads) need_value "$@"; threads="$2"; shift 2 ;;
    --out) need_value "$@"; out="$2"; shift 2 ;;
    --only) need_value "$@"; only="$2"; shift 2 ;;
    --install) install=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) bc_die "unknown option '$1' ('--help' lists the options)" ;;
  esac
done
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || bc_die "--threads must be a positive integer, got '$threads'"
case "$only" in "" | steps | epoch) ;; *) bc_die "--only takes steps or epoch, got '$only'" ;; esac
bc_seed_list "$seeds"

if [ "$install" = 1 ]; then bc_install_torch; fi
# shellcheck disable=SC2119
bc_check_torch
bc_torch_env "$threads"
bc_build
bc_fmnist_data
same_start="$REPO/tools/torch_same_start.py"
compare="$REPO/tests/integration/compare_models.py"
work="$(mktemp -d "${TMPDIR:-/tmp}/mpsl-same-start.XXXXXX")"
trap 'rm -rf "$work"' EXIT

run_logged() { # LOG CMD...
  local log="$1"; shift
  echo "\$ $*" >"$log"
  if ! "$@" >>"$log" 2>&1 </dev/null; then
    tail -20 "$log" >&2
    bc_die "this run failed: $*"
  fi
}
percent_of() { awk -v a="$(grep '^RESULT ' "$1" | bc_field test_acc)" 'BEGIN { printf "%.2f\n", 100 * a }'; }
max_rel() { "$TORCH_PY" "$compare" "$1" "$2" --tolerance 1e-12 | grep -o 'max relative difference [^ ]*' | awk '{ print $4 }' || true; }
torch_on() { # THREADS ARGS... : tools/torch_same_start.py with OpenBLAS and THREADS threads
  local t="$1"; shift
  "${TORCH_ENV[@]}" OMP_NUM_THREADS="$t" OPENBLAS_NUM_THREADS="$t" "$TORCH_PY" "$same_start" "$@" --threads "$t"
}
mpsl_from() { # INIT SEED STEPS(0 = one epoch) OUT
  local cap=()
  [ "$3" = 0 ] || cap=(--max-steps "$3")
  "$MPSL_BIN" train --model fmnist-cnn --data "$FM_TRAIN" --test-data "$FM_TEST" --batch 64 \
    --lr 0.01 --momentum 0.9 --weight-decay 0 --rounds 1 --local-epochs 1 --threads "$threads" \
    --seed "$2" --init-model "$1" --save-model "$4" --quiet "${cap[@]}"
}
torch_from() { # THREADS INIT SEED STEPS OUT
  torch_on "$1" train --init "$2" --data "$FM_TRAIN" --test-data "$FM_TEST" --seed "$3" \
    --steps "$4" --output "$5"
}

for s in "${seed_list[@]}"; do
  "$TORCH_PY" "$same_start" export --seed "$s" --output "$work/init-$s.h5"
done

echo "fmnist-cnn, Fashion-MNIST, batch 64, SGD lr 0.01 momentum 0.9, no weight decay; both sides start"
echo "from PyTorch's initial weights for the seed and visit the batches in mpsl's order for it."
bc_warn_if_busy
step_rows=()
if [ "$only" != epoch ]; then
  s="${seed_list[0]}"
  echo
  echo "1. Largest relative weight difference (per tensor, relative to its largest magnitude), seed $s:"
  printf '%8s  %22s  %26s\n' steps "mpsl vs torch ($threads thr)" "torch 1 thr vs torch $threads thr"
  for n in 1 5 10 20 40 100; do
    run_logged "$work/m.log" mpsl_from "$work/init-$s.h5" "$s" "$n" "$work/m.h5"
    run_logged "$work/t.log" torch_from "$threads" "$work/init-$s.h5" "$s" "$n" "$work/t.h5"
    run_logged "$work/t1.log" torch_from 1 "$work/init-$s.h5" "$s" "$n" "$work/t1.h5"
    a="$(max_rel "$work/m.h5" "$work/t.h5")"
    b="$(max_rel "$work/t1.h5" "$work/t.h5")"
    printf '%8s  %22s  %26s\n' "$n" "$a" "$b"
    step_rows+=("| $n | $a | $b |")
  done
fi
epoch_rows=()
summary=""
if [ "$only" != steps ]; then
  echo
  echo "2. One epoch (937 steps) from the same start: test accuracy %"
  printf '%6s  %8s  %14s  %14s\n' seed mpsl "torch $threads thr" "torch 1 thr"
  m_acc=() t_acc=() t1_acc=()
  for s in "${seed_list[@]}"; do
    run_logged "$work/me-$s.log" mpsl_from "$work/init-$s.h5" "$s" 0 "$work/me.h5"
    run_logged "$work/te-$s.log" torch_from "$threads" "$work/init-$s.h5" "$s" 0 "$work/te.h5"
    run_logged "$work/t1e-$s.log" torch_from 1 "$work/init-$s.h5" "$s" 0 "$work/t1e.h5"
    m_acc+=("$(percent_of "$work/me-$s.log")")
    t_acc+=("$(percent_of "$work/te-$s.log")")
    t1_acc+=("$(percent_of "$work/t1e-$s.log")")
    printf '%6s  %8s  %14s  %14s\n' "$s" "${m_acc[-1]}" "${t_acc[-1]}" "${t1_acc[-1]}"
    epoch_rows+=("| $s | ${m_acc[-1]} | ${t_acc[-1]} | ${t1_acc[-1]} |")
  done
  m_med="$(bc_median "${m_acc[@]}")"
  t_med="$(bc_median "${t_acc[@]}")"
  t1_med="$(bc_median "${t1_acc[@]}")"
  printf '%6s  %8.2f  %14.2f  %14.2f\n' median "$m_med" "$t_med" "$t1_med"
  summary="$(awk -v a="$m_med" -v b="$t_med" -v c="$t1_med" 'BEGIN {
    printf "median mpsl - median torch: %+.2f points; torch 1 thread - torch %s threads: %+.2f points", a - b, "'"$threads"'", c - b }')"
  echo "$summary"
fi

if [ -n "$out" ]; then
  mkdir -p "$(dirname "$out")"
  {
    echo "# fmnist-cnn from the same start, mpsl vs PyTorch ($(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo
    if [ ${#step_rows[@]} -gt 0 ]; then
      echo "| steps | mpsl vs torch | torch 1 thr vs torch $threads thr |"
      echo "|---:|---:|---:|"
      printf '%s\n' "${step_rows[@]}"
      echo
    fi
    if [ ${#epoch_rows[@]} -gt 0 ]; then
      echo "| seed | mpsl % | torch $threads thr % | torch 1 thr % |"
      echo "|---:|---:|---:|---:|"
      printf '%s\n' "${epoch_rows[@]}"
      printf '| median | %.2f | %.2f | %.2f |\n' "$m_med" "$t_med" "$t1_med"
      echo
      echo "$summary"
    fi
  } >"$out"
  echo "written: $out"
fi
