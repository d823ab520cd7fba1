#!/usr/bin/env bash
# Labels and raw samples never leave an owner rank: every message an owner rank sends, under
# both schedules, is an activation of part 1 (to stage 1), a gradient with respect to the
# activation part P received (to stage N), an evaluation activation, or the FedAvg weighted sum
# of its parts; and every activation or gradient message has exactly the size of the activation
# at that cut (micro-batch x features x 4 bytes), never that of a label or sample buffer.
set -uo pipefail
MPSL=${1:?usage: multihop_privacy.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# fmnist-cnn cut after unit 1 (conv, 32x28x28) and before unit 7 (fc, 3136 input features);
# 5 ranks = 2 owner ranks + 3 stages (ranks 2, 3, 4).
for sched in "mpsl 1" "1f1b 2" "1f1b 4"; do
  set -- $sched
  s=$1 m=$2
  rm -rf "$T/audit"
  if ! mpsl_run 5 train --model fmnist-cnn --synthetic --synthetic-count 512 --batch 32 --threads 1 \
    --quiet --max-steps 3 --stages 3 --split 2,4,6,7 --owners 5 --schedule "$s" --micro-batches "$m" \
    --audit-dir "$T/audit" > /dev/null; then
    fail "schedule $s M=$m: run failed"
    continue
  fi
  mb=$((32 / m))
  if out=$($PY - "$T/audit" "$mb" <<'PY'
import glob, json, sys
folder, mb = sys.argv[1], int(sys.argv[2])
# Activation sizes at the cuts 2 (32x28x28) and 7 (3136 features), float32.
act_out = mb * 32 * 28 * 28 * 4      # owner -> stage 1 (rank 2): output of part 1
grad_out = mb * 3136 * 4             # owner -> stage 3 (rank 4): d loss / d input of part P
sample = mb * 1 * 28 * 28 * 4        # a float sample batch (must never appear)
labels = {mb, mb * 4, mb * 8}        # label buffers as u8 / int32 / int64
bad, n = [], 0
for path in glob.glob(folder + "/audit-rank*.jsonl"):
    for line in open(path):
        r = json.loads(line)
        if r["role"] != "owner" or r["direction"] != "out":
            continue
        n += 1
        k, b = r["kind"], r["bytes"]
        ok = ((k == "activation" and b == act_out and r["peer"] == 2)
              or (k == "activation-gradient" and b == grad_out and r["peer"] == 4)
              or k in ("fedavg-weighted-sum", "plan-counts"))
        if not ok or b == sample or b in labels:
            bad.append(r)
print(f"{n} messages sent by owner ranks checked, {len(bad)} unexpected")
for r in bad[:5]:
    print("unexpected:", r)
sys.exit(1 if bad or n == 0 else 0)
PY
  ); then pass "schedule $s M=$m: $out"; else fail "schedule $s M=$m: $out"; fi
done
summary
