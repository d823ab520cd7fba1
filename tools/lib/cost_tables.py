"""Tables for tools/validate_cost_model.sh (standard library only).

    cost_tables.py grid METRICS.jsonl...      round time and peak memory, predicted vs measured
    cost_tables.py headline PLAN.json...      largest node memory, multihop vs one hop
    cost_tables.py gain PLAN.json... METRICS.jsonl...   planner vs even split
    cost_tables.py repeated GRID_DIR...      round time over repeated grids: per configuration
                                             the median measured and the median predicted
"""
import itertools
import json
import math
import os
import random
import re
import statistics
import sys


def events(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def mib(b):
    return b / 2**20


UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}


def dry_run_predictions(path):
    """(round seconds, {rank: peak bytes}) from `mpsl train --dry-run` output, or None."""
    if not os.path.exists(path):
        return None
    text = open(path).read()
    m = re.search(r"predicted round time: ([0-9.]+) s", text)
    if not m:
        return None
    peaks = {}
    for line in text.splitlines():
        r = re.match(r"rank (\d+):.*predicted peak ([0-9.]+) (\w+)", line)
        if r:
            peaks[int(r.group(1))] = float(r.group(2)) * UNITS[r.group(3)]
    return float(m.group(1)), peaks


def round_row(p):
    """(config, measured s, predicted s) of one grid run, or None (unfinished, no prediction).

    Measured: the median of the rounds after the first (which also builds every primitive).
    Predicted: the current binary's dry run beside the metrics (.pred), else the run's own."""
    ev = events(p)
    start = next(e for e in ev if e["event"] == "run_start")
    rounds = [e for e in ev if e["event"] == "round_end"]
    if not rounds or not any(e["event"] == "run_end" for e in ev):
        return None
    fresh = dry_run_predictions(p[: -len(".jsonl")] + ".pred")
    pred = fresh[0] if fresh else rounds[-1].get("predicted_round_seconds")
    if pred is None:
        return None
    meas = statistics.median([e["seconds"] for e in rounds[1:]] or [rounds[-1]["seconds"]])
    return (start["model"], start["schedule"], start["stages"], start["owners"]), meas, pred


def repeated(dirs):
    """The grid measured several times (each grid with its own profiles, taken beside its runs):
    per configuration the median measured round time over the grids against the median
    predicted. A virtual machine's speed drifts by more than the 5% target within minutes, in
    the runs and in the profiles alike; repeating the grid averages that out of both sides.
    Where every grid also retimed its profile before (and after) each run, the medians of those
    predictions are tabled beside the section profile's."""
    kinds = [("section's profile", ".pred"), ("retimed before", ".retimed.pred"),
             ("retimed before and after", ".around.pred")]
    table = {}
    for d in dirs:
        for p in sorted(os.listdir(os.path.join(d, "grid"))):
            if not p.endswith(".jsonl"):
                continue
            path = os.path.join(d, "grid", p)
            r = round_row(path)
            if not r:
                continue
            preds = [r[2]]
            for _, suffix in kinds[1:]:
                extra = dry_run_predictions(path[: -len(".jsonl")] + suffix)
                preds.append(extra[0] if extra else None)
            table.setdefault(r[0], {})[d] = (r[1], preds)
    # A kind of prediction is tabled only where every run of every grid has it.
    used = [i for i in range(len(kinds))
            if table and all(v[1][i] is not None for runs in table.values() for v in runs.values())]
    names = [os.path.basename(os.path.normpath(d)) for d in dirs]
    print(f"\n## Round time over {len(dirs)} grids: median measured vs median predicted\n")
    print("Predictions: " + "; ".join(kinds[i][0] for i in used) + ". Each grid's own error per "
          f"configuration ({kinds[used[-1]][0] if used else '-'}) in the last columns.\n")
    head = "| model | schedule | N | K | measured s |"
    for i in used:
        head += f" {kinds[i][0]} s | error |"
    print(head + " " + " | ".join(names) + " |")
    print("|" + "---|" * (head.count("|") - 1 + len(names)))
    errs = {i: [] for i in used}
    per_grid = {i: {d: [] for d in dirs} for i in used}
    signed = {i: [] for i in used}  # per configuration: each grid's signed error
    for cfg in sorted(table):
        runs = table[cfg]
        meas = statistics.median([m for m, _ in runs.values()])
        line = f"| {cfg[0]} | {cfg[1]} | {cfg[2]} | {cfg[3]} | {meas:.3f} |"
        for i in used:
            pred = statistics.median([p[i] for _, p in runs.values()])
            err = (pred - meas) / meas
            errs[i].append((cfg[0], abs(err), err))
            line += f" {pred:.3f} | {100 * err:+.1f}% |"
            for d, (m, p) in runs.items():
                per_grid[i][d].append(abs((p[i] - m) / m))
            signed[i].append([(p[i] - m) / m for m, p in runs.values()])
        cells = []
        for d in dirs:
            if d in runs and used:
                m, p = runs[d]
                cells.append(f"{100 * (p[used[-1]] - m) / m:+.0f}%")
            else:
                cells.append("-")
        print(line + " " + " | ".join(cells) + " |")
    for i in used:
        a = [e[1] for e in errs[i]]
        if not a:
            continue
        print(f"\n{kinds[i][0]}: median |error| over the grids' medians "
              f"{100 * statistics.median(a):.1f}% over {len(a)} configurations (mean "
              f"{100 * statistics.mean(a):.1f}%, max {100 * max(a):.1f}%; mean signed error "
              f"{100 * statistics.mean(e[2] for e in errs[i]):+.1f}%)")
        for model in sorted({e[0] for e in errs[i]}):
            m = [e[1] for e in errs[i] if e[0] == model]
            print(f"  {model}: median |error| {100 * statistics.median(m):.1f}% over {len(m)}")
        print("  each grid alone: " + ", ".join(
            f"{n} {100 * statistics.median(per_grid[i][d]):.1f}%" for n, d in zip(names, dirs)
            if per_grid[i][d]))
        floor = noise_floor(signed[i])
        if floor:
            scatter, pairs, median, lo, hi, share = floor
            print(f"  run-to-run scatter of one configuration's error: median {100 * scatter:.1f}% "
                  f"(|e_i - e_j| / sqrt 2 over {pairs} pairs of grids); a model without bias "
                  f"would give one grid a median |error| of {100 * median:.1f}% (5-95%: "
                  f"{100 * lo:.1f}-{100 * hi:.1f}%), at most 5% in {100 * share:.0f}% of grids")


def noise_floor(signed, target=0.05):
    """How far one grid lands from the truth by the runs' own scatter: the same configuration's
    error moves from grid to grid (the host's speed during the run and its retimes), so
    |e_i - e_j| / sqrt(2) over pairs of grids is the scatter of one grid's error; and a model
    without bias, whose errors were that scatter alone, would give a single grid's median
    |error| of about... (each configuration's errors less their mean, drawn as many at a time as
    there are configurations, 2000 times). `signed`: per configuration, each grid's signed
    error. Returns (scatter, pairs, median, 5th and 95th percentile, share of grids within
    `target`), or None with fewer than two grids."""
    pairs = [abs(a - b) for errs in signed if len(errs) > 1
             for a, b in itertools.combinations(errs, 2)]
    if not pairs:
        return None
    scatter = statistics.median(pairs) / math.sqrt(2)
    residuals = []
    for errs in signed:
        if len(errs) > 1:
            mean = statistics.mean(errs)
            stretch = math.sqrt(len(errs) / (len(errs) - 1))  # a sample's residuals run small
            residuals += [(e - mean) * stretch for e in errs]
    n = len(signed)
    rng = random.Random(1)
    grids = sorted(statistics.median(abs(rng.choice(residuals)) for _ in range(n))
                   for _ in range(2000))
    return (scatter, len(pairs), statistics.median(grids), grids[len(grids) // 20],
            grids[-len(grids) // 20], sum(g <= target for g in grids) / len(grids))


def profiles_section(paths):
    """The section's profiles (OUT/profile-*.json beside OUT/grid/): how steady the host was."""
    dirs = sorted({os.path.dirname(os.path.dirname(os.path.abspath(p))) for p in paths})
    files = [os.path.join(d, f) for d in dirs for f in sorted(os.listdir(d))
             if f.startswith("profile-") and f.endswith(".json") and not f.endswith(".probe.json")]
    if not files:
        return
    print("\n## Profiles\n")
    print("Step: the whole model's forward and backward per batch. Drift: the medians of the first "
          "and second half of the timed steps, larger over smaller (above 15% the profile warns). "
          "Placement: slowdown with 2, 3, ... processes (spread of its sweeps, largest over "
          "smallest). Calibration: real pipelines of 2, 3, ... ranks, measured round over "
          "predicted at the host's speed of the moment (the factor the cost model applies; "
          "in brackets the speed, step then over the profile's step).\n")
    print("| profile | steps | step ms | drift | placement (spread) | calibration (speed) |")
    print("|---|---:|---:|---:|---|---|")
    for f in files:
        pr = json.load(open(f))
        step = 1e3 * pr["micro_batches"] * sum(u["forward_s"] + u["backward_s"] for u in pr["units"])
        drift = f"{100 * pr['timing_drift']:.0f}%" if pr.get("timing_drift") else "-"
        conc, spread = pr.get("concurrency", []), pr.get("concurrency_spread", [])
        place = ", ".join(f"{c:.2f}" + (f" ({spread[i]:.2f})" if i < len(spread) else "")
                          for i, c in enumerate(conc) if i > 0) or "-"
        calib = ", ".join(f"{c['factor']:.2f} ({c['speed']:.2f})"
                          for c in pr.get("pipeline_calibration", [])) or "-"
        print(f"| {os.path.basename(f)} | {pr.get('repeats', 0)} | {step:.2f} | {drift} | {place} "
              f"| {calib} |")


def cpu_section(paths):
    """Measured CPU per round (all ranks, round 1 included) against the cost model's."""
    rows = []
    for p in paths:
        ev = events(p)
        start = next((e for e in ev if e["event"] == "run_start"), None)
        rounds = [e for e in ev if e["event"] == "round_end"]
        ranks = sorted((e for e in ev if e["event"] == "rank_summary"), key=lambda e: e["rank"])
        if not start or len(rounds) < 2 or not ranks or \
                any("predicted_cpu_s" not in r or "cpu_s" not in r for r in ranks):
            continue
        n = len(rounds)
        cpu = sum(r["cpu_s"] for r in ranks) / n
        pcpu = sum(r["predicted_cpu_s"] for r in ranks)
        per = " ".join(f"{r['cpu_s'] / n / r['predicted_cpu_s']:.2f}" for r in ranks
                       if r["predicted_cpu_s"] > 0)
        rows.append((start["model"], start["schedule"], start["stages"], start["owners"], n, cpu,
                     pcpu, per))
    if not rows:
        return
    rows.sort()
    print("\n## CPU time: measured vs predicted, per run\n")
    print("The ranks' cpu_s per round (round 1 included) against predicted_cpu_s (each rank's "
          "work at the profile's speed). Above 1: CPU the model does not know of.\n")
    print("| model | schedule | N | K | rounds | CPU s/round | predicted CPU s | ratio | per rank |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for m, sc, n, k, r, cpu, pcpu, per in rows:
        print(f"| {m} | {sc} | {n} | {k} | {r} | {cpu:.3f} | {pcpu:.3f} | {cpu / pcpu:.2f} | {per} |")


def grid(paths):
    profiles_section(paths)
    cpu_section(paths)
    rows, mem = [], []
    for p in paths:
        row = round_row(p)
        if row is None:
            continue
        (model, schedule, stages, owners), meas, pred = row
        fresh = dry_run_predictions(p[: -len(".jsonl")] + ".pred")
        # At the machine's speed just before the run (validate_cost_model.sh's probe), if known.
        now = dry_run_predictions(p[: -len(".jsonl")] + ".now.pred")
        speed_file = p[: -len(".jsonl")] + ".speed"
        speed = float(open(speed_file).read()) if os.path.exists(speed_file) else None
        # With the profile's times measured again just before the run (`profile --retime`).
        retimed = dry_run_predictions(p[: -len(".jsonl")] + ".retimed.pred")
        # The same at the mean of the speeds retimed just before and just after the run.
        around = dry_run_predictions(p[: -len(".jsonl")] + ".around.pred")
        rows.append((model, schedule, stages, owners, meas, pred, (pred - meas) / meas,
                     now[0] if now else None, speed, retimed[0] if retimed else None,
                     around[0] if around else None))
        for e in events(p):
            if e["event"] != "rank_summary":
                continue
            peak = fresh[1].get(e["rank"]) if fresh else e.get("predicted_peak_bytes")
            if peak:
                mem.append((model, schedule, stages, owners, e["rank"], e["role"],
                            e["peak_rss_bytes"], e["tracked_peak_bytes"], peak,
                            e.get("max_in_flight"), e.get("predicted_max_in_flight")))
    rows.sort()
    print("\n## Round time: predicted vs measured (median of rounds 2..R)\n")
    probed = bool(rows) and all(r[7] is not None for r in rows)
    retimed = bool(rows) and all(r[9] is not None for r in rows)
    around = bool(rows) and all(r[10] is not None for r in rows)
    if probed:
        print("Speed: the probe's step time before the run over its time beside the profile; "
              "'at run speed': the profile's times scaled by it.")
    if retimed:
        print("Retimed: predicted from the profile with its times measured again just before "
              "the run (`mpsl profile --from P --retime`; bytes, placement and hops kept).")
    if around:
        print("Around: the retimed profile at the mean of its speed and the speed retimed just "
              "after the run.")
    print()
    head = "| model | schedule | N | K | measured s | predicted s | error |"
    if probed:
        head += " speed | predicted at run speed s | error |"
    if retimed:
        head += " retimed s | error |"
    if around:
        head += " around s | error |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        line = f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[5]:.3f} | {100 * r[6]:+.1f}% |"
        if probed:
            line += f" {r[8]:.3f} | {r[7]:.3f} | {100 * (r[7] - r[4]) / r[4]:+.1f}% |"
        if retimed:
            line += f" {r[9]:.3f} | {100 * (r[9] - r[4]) / r[4]:+.1f}% |"
        if around:
            line += f" {r[10]:.3f} | {100 * (r[10] - r[4]) / r[4]:+.1f}% |"
        print(line)

    def summary(label, err):
        errs = [abs(err(r)) for r in rows]
        print(f"\n{label}: median |error| {100 * statistics.median(errs):.1f}% over {len(rows)} "
              f"runs (mean {100 * statistics.mean(errs):.1f}%, max {100 * max(errs):.1f}%)")
        for model in sorted({r[0] for r in rows}):
            e = [abs(err(r)) for r in rows if r[0] == model]
            print(f"  {model}: median |error| {100 * statistics.median(e):.1f}% over {len(e)} runs")

    if rows:
        summary("profile as measured", lambda r: r[6])
        if probed:
            summary("at run speed", lambda r: (r[7] - r[4]) / r[4])
        if retimed:
            summary("retimed before the run", lambda r: (r[9] - r[4]) / r[4])
        if around:
            summary("retimed before and after the run", lambda r: (r[10] - r[4]) / r[4])
    mem.sort()
    print("\n## Peak memory per rank: predicted vs measured (peak RSS)\n")
    # In flight: the most batches (micro-batches with 1f1b) the rank held activations for at
    # once, measured / simulated (metrics from before they were reported show '-').
    print("| model | schedule | N | K | rank | role | peak RSS MiB | tracked MiB | predicted MiB | "
          "error | in flight |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in mem:
        err = (m[8] - m[6]) / m[6]
        flight = f"{m[9]}/{m[10]}" if m[9] is not None and m[10] is not None else "-"
        print(f"| {m[0]} | {m[1]} | {m[2]} | {m[3]} | {m[4]} | {m[5]} | {mib(m[6]):.0f} | "
              f"{mib(m[7]):.0f} | {mib(m[8]):.0f} | {100 * err:+.1f}% | {flight} |")
    if mem:
        errs = [abs((m[8] - m[6]) / m[6]) for m in mem]
        within = sum(e <= 0.10 for e in errs)
        print(f"\nmedian |error| {100 * statistics.median(errs):.1f}%, {within}/{len(errs)} ranks "
              f"within 10%, max {100 * max(errs):.1f}%")
        for model in sorted({m[0] for m in mem}):
            e = [abs((m[8] - m[6]) / m[6]) for m in mem if m[0] == model]
            print(f"  {model}: median |error| {100 * statistics.median(e):.1f}%, "
                  f"{sum(x <= 0.10 for x in e)}/{len(e)} within 10%")


def headline(paths):
    table = {}
    for p in paths:
        j = json.load(open(p))
        table[(j["model"], j["owners"], j["stages"])] = j
    print("\n## Largest per-node memory, batch 128: multihop vs one hop (memory-optimal split)\n")
    print("| model | K | one hop (N=1) | N=2 | N=3 | N=4 | largest reduction |")
    print("|---|---|---|---|---|---|---|")
    for model in sorted({k[0] for k in table}):
        for k in sorted({k[1] for k in table if k[0] == model}):
            one = table.get((model, k, 1))
            if not one:
                continue
            base = one["memory_optimal"]["max_stage_bytes"]
            cells, best = [], 0.0
            for n in (2, 3, 4):
                j = table.get((model, k, n))
                if not j:
                    cells.append("-")
                    continue
                b = j["memory_optimal"]["max_stage_bytes"]
                red = 1 - b / base
                best = max(best, red)
                cells.append(f"{b / 2**30:.2f} GiB ({-100 * red:+.0f}%)")
            print(f"| {model} | {k} | {base / 2**30:.2f} GiB | " + " | ".join(cells) +
                  f" | {100 * best:.0f}% |")


def gain(paths):
    plans = [p for p in paths if p.endswith(".json") and "measured" not in os.path.basename(p)]
    print("\n## Planner vs even split by unit count (predicted round time, paper-like devices)\n")
    print("| model | K | N | planned split | even split | planned s | even s | gain |")
    print("|---|---|---|---|---|---|---|---|")
    for p in sorted(plans):
        j = json.load(open(p))
        pl, ev = j["predicted"]["round_s"], j["even_split"]["predicted_round_s"]
        print(f"| {j['model']} | {j['owners']} | {j['stages']} | {','.join(map(str, j['split']))} | "
              f"{','.join(map(str, j['even_split']['split']))} | {pl:.1f} | {ev:.1f} | "
              f"{100 * (ev - pl) / ev:.1f}% |")
    meas = {"plan": [], "even": []}
    pred = {}
    for p in paths:
        m = re.search(r"measured-(plan|even)-\d+\.jsonl$", p)
        if not m:
            continue
        rounds = [e for e in events(p) if e["event"] == "round_end"]
        if rounds:
            meas[m.group(1)].append(rounds[-1]["seconds"])
            pred[m.group(1)] = rounds[-1].get("predicted_round_seconds")
    if meas["plan"] and meas["even"]:
        mp, me = statistics.median(meas["plan"]), statistics.median(meas["even"])
        print("\n## Measured on this machine (fmnist-cnn, K=4, N=3, 4 ranks on 2 cores, median of "
              f"{len(meas['plan'])})\n")
        print("| split | measured s | predicted s |")
        print("|---|---|---|")
        print(f"| planned | {mp:.3f} | {pred['plan']:.3f} |")
        print(f"| even | {me:.3f} | {pred['even']:.3f} |")
        print(f"\nmeasured gain {100 * (me - mp) / me:.1f}%, predicted gain "
              f"{100 * (pred['even'] - pred['plan']) / pred['even']:.1f}%")


def usage_error(text):
    print(f"cost_tables.py: {text}; --help lists the tables", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    tables = {"grid": grid, "headline": headline, "gain": gain, "repeated": repeated}
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    what, files = sys.argv[1], sys.argv[2:]
    if what not in tables:
        usage_error(f"unknown table '{what}' (one of: {', '.join(tables)})")
    missing = [f for f in files if not os.path.exists(f)]
    if not files or missing:
        usage_error(f"{what}: " + (f"no such file or folder: {', '.join(missing)}" if missing
                                   else "give the files or folders to read"))
    tables[what](files)
