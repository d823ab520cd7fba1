#!/usr/bin/env bash
# Privacy invariants, from the per-rank message audits (--audit-dir) and the files each rank
# writes, under every schedule (mpsl; 1f1b with M = 2 and 4) and three layouts:
#   A: 5 ranks = 2 owner ranks + 3 stages, K = 5, --split 2,4,6,7
#   B: 2 ranks = 1 owner rank + 1 stage, K = 3 (the stage is first and last stage at once)
#   C: 4 ranks = 2 owner ranks + 2 stages, K = 4, with a test set (evaluation through the
#      pipeline), --save-model and --checkpoint-dir
# Checked:
#  1. Owner ranks send only: part-1 activations to stage 1 and gradients w.r.t. part P's input
#     to stage N, each exactly (micro-batch x features at that cut x 4) bytes, never the size of
#     a sample or label batch; rank 0's evaluation activations to stage 1; FedAvg weighted sums
#     (a reduction over the owner ranks); counts and times (plan-counts, round-tallies,
#     eval-count, rank-summary, checkpoint-file-summary, checkpoint-manifest, process-ids).
#  2. Stage ranks send only activations/gradients at their cuts, evaluation activations, their
#     own aggregated part to rank 0 (stage-part, with --save-model), counts and times.
#  3. Every point-to-point message recorded as sent is recorded as received (same count and
#     bytes per sender, receiver and kind), so the audit covers both ends.
#  4. Checkpoint files: a stage rank's file holds no owner group (owner parts 1 and P are never
#     written by other ranks); owner rank r's file holds exactly its owners k (k mod O = r).
set -uo pipefail
MPSL=${1:?usage: multihop_privacy.sh PATH_TO_MPSL}
source "$(dirname "$0")/lib_mpi.bash"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# A small test set in the Fashion-MNIST format (for layout C's evaluation).
random_test_set "$T/test.h5" 100 3 || { echo "making the test set failed"; exit 1; }

check() {  # check NAME DIR RANKS OWNER_RANKS MICRO_BATCH ACT1 GRADP [CKPT_DIR]
  local name=$1
  shift
  if out=$($PY - "$@" <<'PY'
import glob, json, sys
from collections import defaultdict
folder, R, O, mb, act1, gradp = sys.argv[1], *map(int, sys.argv[2:7])
ckpt = sys.argv[7] if len(sys.argv) > 7 else ""
first, last = O, R - 1                      # ranks of stage 1 and stage N
recs = []
for r in range(R):
    recs += [json.loads(l) for l in open(f"{folder}/audit-rank{r}.jsonl")]
meta = {"plan-counts", "round-tallies", "eval-count", "rank-summary", "checkpoint-file-summary",
        "checkpoint-manifest", "process-ids", "late-owners", "straggler-finished",
        "straggler-stop", "reservation"}
sample, labels = mb * 28 * 28 * 4, {mb, mb * 4, mb * 8}
bad, n = [], 0
for x in recs:
    if x["direction"] != "out":
        continue
    n += 1
    k, b, p, r = x["kind"], x["bytes"], x["peer"], x["rank"]
    if x["role"] == "owner":
        ok = ((k == "activation" and p == first and b == mb * act1 * 4)
              or (k == "activation-gradient" and p == last and b == mb * gradp * 4)
              or (k == "eval-activation" and r == 0 and p == first and b % (act1 * 4) == 0)
              or (k == "fedavg-weighted-sum" and p == -1) or k in meta)
        # what carries data never has the size of a sample or label batch
        if k in ("activation", "activation-gradient", "eval-activation"):
            ok = ok and b != sample and b not in labels
    else:
        ok = (k in ("activation", "activation-gradient", "eval-activation")
              or (k == "stage-part" and p == 0) or (k == "replica-weighted-sum" and p == -1)
              or k in meta)
    if not ok:
        bad.append(x)
# 3. both ends recorded
sent, got = defaultdict(lambda: [0, 0]), defaultdict(lambda: [0, 0])
for x in recs:
    if x["kind"] not in ("activation", "activation-gradient", "eval-activation", "stage-part"):
        continue
    key = (x["rank"], x["peer"], x["kind"]) if x["direction"] == "out" else (x["peer"], x["rank"], x["kind"])
    d = sent if x["direction"] == "out" else got
    d[key][0] += 1
    d[key][1] += x["bytes"]
unpaired = [k for k in set(sent) | set(got) if sent.get(k) != got.get(k)]
# 4. checkpoint files
files = 0
if ckpt:
    import h5py
    for path in glob.glob(ckpt + "/ckpt-*/rank-*.h5"):
        r = int(path.rsplit("rank-", 1)[1].split(".")[0])
        with h5py.File(path, "r") as f:
            owners = sorted(int(k) for k in f["owners"].keys()) if "owners" in f else []
        files += 1
        if r >= O and owners:
            bad.append(f"{path}: stage rank {r} holds owner parts {owners}")
        if r < O and (not owners or any(k % O != r for k in owners)):
            bad.append(f"{path}: owner rank {r} holds owners {owners}")
print(f"{n} messages sent checked, {len(bad)} unexpected, {len(unpaired)} unpaired, "
      f"{files} checkpoint files checked")
for x in bad[:5]:
    print("unexpected:", x)
for k in unpaired[:5]:
    print("unpaired:", k, sent.get(k), got.get(k))
sys.exit(1 if bad or unpaired or n == 0 or (ckpt and files == 0) else 0)
PY
  ); then pass "$name: $out"; else fail "$name: $out"; fi
}

B="--model fmnist-cnn --synthetic --synthetic-count 512 --batch 32 --threads 1 --quiet --max-steps 3"
for sm in mpsl:1 1f1b:2 1f1b:4; do
  s=${sm%:*} m=${sm#*:}
  mb=$((32 / m))
  # A: cut after unit 1 (32x28x28 = 25088 features) and before unit 7 (3136 features).
  rm -rf "$T/a"
  # shellcheck disable=SC2086
  mpsl_run 5 train $B --stages 3 --split 2,4,6,7 --owners 5 --schedule "$s" --micro-batches "$m" \
    --audit-dir "$T/a" > /dev/null && check "A 5 ranks, $s M=$m" "$T/a" 5 2 "$mb" 25088 3136 \
    || fail "A 5 ranks, $s M=$m: run failed"
  # B: cut after unit 0 (25088) and before unit 8 (128 features).
  rm -rf "$T/b"
  # shellcheck disable=SC2086
  mpsl_run 2 train $B --stages 1 --split 1,8 --owners 3 --schedule "$s" --micro-batches "$m" \
    --audit-dir "$T/b" > /dev/null && check "B 2 ranks, $s M=$m" "$T/b" 2 1 "$mb" 25088 128 \
    || fail "B 2 ranks, $s M=$m: run failed"
  # C: with evaluation, --save-model and checkpoints.
  rm -rf "$T/c" "$T/ck"
  # shellcheck disable=SC2086
  mpsl_run 4 train $B --stages 2 --split 1,3,8 --owners 4 --schedule "$s" --micro-batches "$m" \
    --test-data "$T/test.h5" --save-model "$T/c.h5" --checkpoint-dir "$T/ck" --audit-dir "$T/c" \
    > /dev/null && check "C 4 ranks + eval, save, checkpoints, $s M=$m" "$T/c" 4 2 "$mb" 25088 128 "$T/ck" \
    || fail "C 4 ranks, $s M=$m: run failed"
done
summary
