#!/usr/bin/env bash
# mpsl vs PyTorch, side by side on this machine: training throughput (images/s) of the same
# network with the same batch and thread count, runs alternating (mpsl, torch, mpsl, torch, ...)
# so that both sides see the same machine state. Prints a table with the medians, the ratio,
# the target and the fraction of the machine's f32 peak (484 GFLOP/s on 2 cores) that mpsl
# reaches (training FLOPs per image = 3 x the forward FLOPs `mpsl inspect --model` reports).
#
#   fmnist-cnn  batch 64, Fashion-MNIST: mpsl train vs ../shared/baselines/torch_baseline.py
#               train (OpenBLAS), both timing the same steps after the same warm-up. Target 2x.
#   vgg19, resnet18 (also resnet101, resnet101-basic)  batch 128, CIFAR-10 shape, synthetic
#               data: mpsl train --synthetic vs torch_models_bench.py step. Target 1.5x.
#
# Usage: tools/bench_vs_torch.sh [options]
#   --models LIST     comma-separated (default fmnist-cnn,vgg19,resnet18)
#   --reps N          runs of each side per model (default 3)
#   --threads N       threads of each side (default 2)
#   --fmnist-steps N  fmnist-cnn steps per run, warm-up included (default 300; warm-up 20)
#   --cifar-steps N   timed steps per run for the CIFAR models (default: vgg19 8, resnet* 15;
#                     plus 2 warm-up steps)
#   --quick           a smoke run: 1 rep, 60 fmnist-cnn steps, 2 timed CIFAR steps
#   --out FILE        also write the table as markdown to FILE and as CSV to FILE's name
#                     with .csv (raw logs of every run go to FILE's name with -logs/)
#   --check           exit 1 when a ratio misses its target
#   --install         first apt-get install python3-torch python3-torchvision libopenblas0-pthread
#   -h, --help
# Environment: MPSL_BUILD_DIR (build folder, default build/), MPSL_BIN (use this binary, no
# build), MPSL_NO_BUILD=1 (skip the build when the binary exists), MPSL_SHARED_DIR (the folder
# holding baselines/, default ../shared), MPSL_DATA_DIR (converted Fashion-MNIST, default data/).
# Each run has a time limit (MPSL_BENCH_TIMEOUT seconds, default 1800).
set -euo pipefail
# shellcheck source=tools/lib/bench_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/bench_common.sh"

PEAK_GFLOPS=484
models="fmnist-cnn,vgg19,resnet18"
reps=""
threads=2
fmnist_steps=""
fmnist_warmup=20
cifar_steps=""
cifar_warmup=2
quick=0
out=""
check=0
install=0
run_timeout="${MPSL_BENCH_TIMEOUT:-1800}"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then bc_die "$1 needs a value ('--help' lists the options)"; fi; }
positive() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || bc_die "$1 must be a positive integer, got '$2'"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --models) need_value "$@"; models="$2"; shift 2 ;;
    --reps) need_value "$@"; positive "$1" "$2"; reps="$2"; shift 2 ;;
    --threads) need_value "$@"; positive "$1" "$2"; threads="$2"; shift 2 ;;
    --fmnist-steps) need_value "$@"; positive "$1" "$2"; fmnist_steps="$2"; shift 2 ;;
    --cifar-steps) need_value "$@"; positive "$1" "$2"; cifar_steps="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) need_value "$@"; out="$2"; shift 2 ;;
    --check) check=1; shift ;;
    --install) install=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) bc_die "unknown option '$1' ('--help' lists the options)" ;;
  esac
done
if [ "$quick" = 1 ]; then   # explicit --fmnist-steps / --cifar-steps still win
  reps="${reps:-1}"
  fmnist_steps="${fmnist_steps:-60}"
  fmnist_warmup=10
  cifar_steps="${cifar_steps:-2}"
  cifar_warmup=1
fi
fmnist_steps="${fmnist_steps:-300}"
reps="${reps:-3}"
[ "$fmnist_steps" -gt "$fmnist_warmup" ] ||
  bc_die "--fmnist-steps must be more than the $fmnist_warmup warm-up steps"

IFS=, read -r -a model_list <<<"$models"
[ ${#model_list[@]} -gt 0 ] || bc_die "--models is empty"
need_fmnist=0
need_vision=0
for m in "${model_list[@]}"; do
  case "$m" in
    fmnist-cnn) need_fmnist=1 ;;
    vgg19 | resnet18 | resnet101 | resnet101-basic) need_vision=1 ;;
    *) bc_die "--models: no PyTorch counterpart for '$m' (choose from fmnist-cnn, vgg19, resnet18, resnet101, resnet101-basic)" ;;
  esac
done

# ------------------------------------------------------------------------------ preparation
if [ "$install" = 1 ]; then bc_install_torch; fi
if [ "$need_vision" = 1 ]; then bc_check_torch torchvision; else bc_check_torch; fi
torch_baseline="$(bc_baseline torch_baseline.py)"
torch_models="$(bc_baseline torch_models_bench.py)"
bc_torch_env "$threads"
bc_build
if [ "$need_fmnist" = 1 ]; then bc_fmnist_data; fi

if [ -n "$out" ]; then
  case "$out" in
    *.csv) csv_out="$out"; md_out="${out%.csv}.md" ;;
    *) md_out="$out"; csv_out="${out%.*}.csv" ;;
  esac
  [ "$csv_out" != "$md_out" ] || csv_out="$out.csv"
  mkdir -p "$(dirname "$out")"
  logs="${out%.*}-logs"
  rm -rf "$logs"
  mkdir -p "$logs"
else
  logs="$(mktemp -d "${TMPDIR:-/tmp}/mpsl-bench.XXXXXX")"
  trap 'rm -rf "$logs"' EXIT
fi

# Forward FLOPs per image, from the "total:" line of `mpsl inspect --model NAME --batch 1`.
fwd_flops() {
  local line
  line="$("$MPSL_BIN" inspect --model "$1" --batch 1 | grep '^total:')" ||
    bc_die "mpsl inspect --model $1 printed no 'total:' line"
  awk '{
    for (i = 2; i <= NF; i++) if ($i == "forward" && $(i + 1) == "FLOPs") {
      v = $(i - 1); u = ""
      if (v ~ /^[KMGT]$/) { u = v; v = $(i - 2) }
      else if (v ~ /[KMGT]$/) { u = substr(v, length(v)); v = substr(v, 1, length(v) - 1) }
      m = (u == "K") ? 1e3 : (u == "M") ? 1e6 : (u == "G") ? 1e9 : (u == "T") ? 1e12 : 1
      printf "%.6g\n", v * m; exit
    }
    exit 1 }' <<<"$line" || bc_die "cannot read the forward FLOPs from '$line'"
}

# run_logged LOG CMD...: runs CMD with the time limit, output to LOG; dies if it fails.
run_logged() {
  local log="$1"; shift
  echo "\$ $*" >"$log"
  if ! timeout -k 10 "$run_timeout" "$@" >>"$log" 2>&1 </dev/null; then
    tail -20 "$log" >&2
    bc_die "this run failed (log: $log): $*"
  fi
}

# One run of each side; each prints images/s.
mpsl_run() { # MODEL REP
  local m="$1" rep="$2" log="$logs/$1-mpsl-$2.log" ips steps want
  if [ "$m" = fmnist-cnn ]; then
    want="$fmnist_steps"
    run_logged "$log" "$MPSL_BIN" train --model fmnist-cnn --data "$FM_TRAIN" --batch 64 \
      --lr 0.01 --momentum 0.9 --weight-decay 0 --threads "$threads" --max-steps "$want" \
      --warmup-steps "$fmnist_warmup" --seed "$rep"
  else
    local timed="${cifar_steps:-$(default_cifar_steps "$m")}"
    want=$((timed + cifar_warmup))
    run_logged "$log" "$MPSL_BIN" train --model "$m" --synthetic \
      --synthetic-count $((want * 128 > 1024 ? want * 128 : 1024)) --batch 128 \
      --threads "$threads" --max-steps "$want" --warmup-steps "$cifar_warmup" --seed "$rep"
  fi
  ips="$(grep '^RESULT ' "$log" | bc_field train_img_per_s)"
  steps="$(grep '^RESULT ' "$log" | bc_field steps)"
  [ -n "$ips" ] || bc_die "no RESULT line with train_img_per_s in $log"
  [ "$steps" = "$want" ] || bc_die "mpsl ran $steps steps, not $want (log: $log)"
  echo "$ips"
}

torch_run() { # MODEL REP
  local m="$1" rep="$2" log="$logs/$1-torch-$2.log" ips
  if [ "$m" = fmnist-cnn ]; then
    run_logged "$log" "${TORCH_ENV[@]}" "$TORCH_PY" "$torch_baseline" train \
      --threads "$threads" --steps "$fmnist_steps" --warmup "$fmnist_warmup" --batch 64 \
      --lr 0.01 --seed "$rep" --log-every 100000
    ips="$(grep '^RESULT ' "$log" | bc_field train_img_per_s)"
  else
    local timed="${cifar_steps:-$(default_cifar_steps "$m")}" name="$m"
    [ "$m" = resnet101-basic ] && name=resnet101_mpsl
    run_logged "$log" "${TORCH_ENV[@]}" "$TORCH_PY" "$torch_models" step --model "$name" \
      --threads "$threads" --batch 128 --warmup "$cifar_warmup" --reps "$timed"
    ips="$(grep '^RESULT ' "$log" | tail -1 | cut -d' ' -f2- |
      "$TORCH_PY" -c 'import json,sys; r=json.load(sys.stdin); print("%.1f" % r["img_per_s"])
if "openblas" not in r.get("blas", ""): sys.stderr.write("torch did not load OpenBLAS: %s\n" % r.get("blas"))')"
  fi
  [ -n "$ips" ] || bc_die "no images/s in the torch output (log: $log)"
  echo "$ips"
}

default_cifar_steps() { case "$1" in vgg*) echo 8 ;; *) echo 15 ;; esac; }
target_of() { case "$1" in fmnist-cnn) echo 2.0 ;; vgg19 | resnet18) echo 1.5 ;; *) echo "" ;; esac; }
batch_of() { case "$1" in fmnist-cnn) echo 64 ;; *) echo 128 ;; esac; }

# ------------------------------------------------------------------------------------- runs
echo "mpsl vs PyTorch: models $models, $reps rep(s), $threads thread(s), binary $MPSL_BIN"
echo "torch: $("$TORCH_PY" -c 'import torch; print(torch.__version__)') with OpenBLAS ($OPENBLAS_DIR); logs in $logs"
bc_warn_if_busy
declare -A mpsl_ips torch_ips flops
for m in "${model_list[@]}"; do
  flops[$m]="$(fwd_flops "$m")"
  mpsl_ips[$m]=""
  torch_ips[$m]=""
done
t_start=$SECONDS
for rep in $(seq 1 "$reps"); do
  for m in "${model_list[@]}"; do
    a="$(mpsl_run "$m" "$rep")"
    b="$(torch_run "$m" "$rep")"
    mpsl_ips[$m]+="$a "
    torch_ips[$m]+="$b "
    printf 'rep %d/%d  %-16s mpsl %9.1f img/s   torch %9.1f img/s   (load %s, %d s so far)\n' \
      "$rep" "$reps" "$m" "$a" "$b" "$(bc_load)" $((SECONDS - t_start))
  done
done

# ------------------------------------------------------------------------------------ table
header="model,batch,threads,mpsl_img_per_s,torch_img_per_s,ratio,target,target_met,mpsl_peak_fraction,torch_peak_fraction,train_gflop_per_image,mpsl_runs,torch_runs"
rows=()
missed=0
for m in "${model_list[@]}"; do
  read -r -a av <<<"${mpsl_ips[$m]}"
  read -r -a bv <<<"${torch_ips[$m]}"
  a="$(bc_median "${av[@]}")"
  b="$(bc_median "${bv[@]}")"
  tgt="$(target_of "$m")"
  row="$(awk -v m="$m" -v bs="$(batch_of "$m")" -v th="$threads" -v a="$a" -v b="$b" -v t="$tgt" \
    -v f="${flops[$m]}" -v peak="$PEAK_GFLOPS" -v ar="${av[*]}" -v br="${bv[*]}" 'BEGIN {
      ratio = (b > 0) ? a / b : 0
      met = (t == "") ? "-" : (ratio >= t ? "yes" : "no")
      gf = 3 * f / 1e9
      printf "%s,%d,%d,%.1f,%.1f,%.2f,%s,%s,%.3f,%.3f,%.4f,%s,%s", m, bs, th, a, b, ratio,
        (t == "" ? "-" : t "x"), met, a * gf / peak, b * gf / peak, gf, ar, br }')"
  rows+=("$row")
  if [ "$(cut -d, -f8 <<<"$row")" = no ]; then missed=$((missed + 1)); fi
done

print_table() {
  printf '| model | batch | threads | mpsl img/s (median) | torch img/s (median) | ratio | target | met | mpsl %% of %d GFLOP/s | torch %% of peak | mpsl runs | torch runs |\n' "$PEAK_GFLOPS"
  echo "|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---|---|"
  local r
  for r in "${rows[@]}"; do
    IFS=, read -r m bs th a b ratio t met fa fb _ ar br <<<"$r"
    printf '| %s | %s | %s | %s | %s | %sx | %s | %s | %.1f%% | %.1f%% | %s | %s |\n' "$m" "$bs" "$th" \
      "$a" "$b" "$ratio" "$t" "$met" "$(awk -v x="$fa" 'BEGIN{print 100*x}')" \
      "$(awk -v x="$fb" 'BEGIN{print 100*x}')" "$ar" "$br"
  done
}

echo
print_table
echo
echo "ratio = mpsl / torch images/s (medians of $reps run(s) each); peak fraction = images/s x 3 x forward FLOPs per image / $PEAK_GFLOPS GFLOP/s"
if [ -n "$out" ]; then
  {
    echo "# mpsl vs PyTorch ($(date -u +%Y-%m-%dT%H:%MZ), $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown))"
    echo
    echo "Same machine, runs alternating mpsl/torch; $threads threads each; PyTorch $("$TORCH_PY" -c 'import torch; print(torch.__version__)') with OpenBLAS."
    echo "fmnist-cnn: Fashion-MNIST, $fmnist_steps steps of which $fmnist_warmup warm-up (mpsl train vs torch_baseline.py)."
    echo "CIFAR models: synthetic 3x32x32 data, batch 128, ${cifar_steps:-default} timed steps after $cifar_warmup warm-up (mpsl train --synthetic vs torch_models_bench.py step)."
    echo
    print_table
  } >"$md_out"
  { echo "$header"; printf '%s\n' "${rows[@]}"; } >"$csv_out"
  echo "written: $md_out, $csv_out (logs: $logs)"
fi
if [ "$missed" -gt 0 ]; then
  echo "targets: $missed missed"
  if [ "$check" = 1 ]; then exit 1; fi
else
  echo "targets: all met"
fi
exit 0
