#!/usr/bin/env python3
"""A real run's trace beside the cost model's: where the predicted round time goes wrong.

    mpirun -n 4 mpsl train ... --profile P --trace measured.json
    mpirun -n 4 mpsl train ... --profile P --dry-run --trace predicted.json
    tools/compare_traces.py measured.json predicted.json [--plot rounds.png]

Per rank and activity: spans per round, their time and CPU time per round (the measured run's
rounds 2..R; the prediction's round 1), and the ratio measured over predicted; and how long
0, 1, 2, ... ranks computed at once. `copy in` is the receiver taking messages in (Open MPI's
single copy happens in the receiver's MPI calls): in a real trace the calls that completed
receives, often inside a `wait`.
--plot draws the median-length measured round above the predicted one, rank by rank, on one time
scale (needs python3-matplotlib: run it with /usr/bin/python3 where another python3 comes
first).
"""
import argparse
import json
import statistics
import sys

COMPUTE = ("forward", "backward", "optimizer")
ORDER = COMPUTE + ("copy in", "wait", "send", "aggregation", "eval")
COLOURS = {"forward": "#4c72b0", "backward": "#dd8452", "optimizer": "#55a868",
           "copy in": "#c44e52", "aggregation": "#8172b3", "eval": "#937860"}


def fail(message):
    print(f"compare_traces: {message}", file=sys.stderr)
    sys.exit(2)


def load(path):
    try:
        with open(path) as f:
            trace = json.load(f)
    except OSError as e:
        fail(f"cannot read '{path}': {e.strerror}")
    except json.JSONDecodeError as e:
        fail(f"'{path}' is not a JSON trace: {e}")
    if not isinstance(trace, dict) or "traceEvents" not in trace:
        fail(f"'{path}' is not an mpsl trace (no traceEvents)")
    spans = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    if not spans:
        fail(f"'{path}' has no spans")
    return trace.get("otherData", {}), spans, names


def rounds_of(spans):
    """{round: (start us, end us)} over every rank's spans of that round."""
    out = {}
    for e in spans:
        r = e["args"].get("round", 0)
        s, t = e["ts"], e["ts"] + e["dur"]
        a, b = out.get(r, (s, t))
        out[r] = (min(a, s), max(b, t))
    return out


def per_round(spans, rounds):
    """{(rank, activity): (spans, time ms, cpu ms)} per round, over `rounds`."""
    acc = {}
    for e in spans:
        if e["args"].get("round", 0) not in rounds:
            continue
        key = (e["pid"], e["name"])
        n, t, c = acc.get(key, (0, 0.0, 0.0))
        cpu = e["args"].get("cpu_ms")
        acc[key] = (n + 1, t + e["dur"] / 1e3, c + (cpu if cpu is not None and cpu >= 0 else 0.0))
    k = len(rounds)
    return {key: (n / k, t / k, c / k) for key, (n, t, c) in acc.items()}


def concurrency(spans, rounds):
    """{n: ms per round during which n ranks were in a compute or copy-in span}."""
    acc = {}
    for r in rounds:
        edges = []
        for e in spans:
            if e["args"].get("round") == r and e["name"] in COMPUTE + ("copy in",):
                edges += [(e["ts"], 1, e["pid"]), (e["ts"] + e["dur"], -1, e["pid"])]
        edges.sort()
        depth = {}
        for (t, d, pid), (t_next, _, _) in zip(edges, edges[1:]):
            depth[pid] = depth.get(pid, 0) + d
            n = sum(1 for v in depth.values() if v > 0)
            acc[n] = acc.get(n, 0.0) + (t_next - t) / 1e3
    return {n: v / len(rounds) for n, v in sorted(acc.items())}


def ratio(a, b):
    return f"{a / b:5.2f}" if b > 0 else "    -"


def plot(path, measured, m_round, predicted, names):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib (Debian: python3-matplotlib; run with /usr/bin/python3)")
    ranks = sorted({e["pid"] for e in measured} | {e["pid"] for e in predicted})
    fig, axes = plt.subplots(2, 1, figsize=(13, 1.0 + 0.9 * len(ranks) * 2), sharex=True)
    m0 = min(e["ts"] for e in measured if e["args"].get("round") == m_round)
    panels = [(axes[0], [e for e in measured if e["args"].get("round") == m_round], m0,
               f"measured (round {m_round})"),
              (axes[1], predicted, 0.0, "predicted (cost model, round 1)")]
    for ax, spans, t0, title in panels:
        for e in spans:
            colour = COLOURS.get(e["name"])
            if colour is None:
                continue
            row = ranks.index(e["pid"])
            ax.broken_barh([((e["ts"] - t0) / 1e3, max(e["dur"] / 1e3, 0.05))], (row - 0.4, 0.8),
                           facecolors=colour, edgecolors="none")
        ax.set_yticks(range(len(ranks)))
        ax.set_yticklabels([names.get(r, f"rank {r}") for r in ranks], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
    axes[1].set_xlabel("ms from the round's start")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    fig.legend(handles, COLOURS.keys(), loc="upper right", ncol=len(COLOURS), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("measured", help="--trace of a real run")
    ap.add_argument("predicted", help="--trace of the same command with --dry-run")
    ap.add_argument("--plot", metavar="FILE.png", help="draw a measured and the predicted round")
    a = ap.parse_args()
    m_other, m_spans, names = load(a.measured)
    p_other, p_spans, p_names = load(a.predicted)
    if m_other.get("predicted"):
        fail(f"'{a.measured}' is a predicted trace (--dry-run); give a real run's first")
    if not p_other.get("predicted"):
        fail(f"'{a.predicted}' is a real run's trace; give the --dry-run trace second")
    if m_other.get("ranks") != p_other.get("ranks"):
        fail(f"the traces have {m_other.get('ranks')} and {p_other.get('ranks')} ranks")
    m_rounds = rounds_of(m_spans)
    steady = sorted(r for r in m_rounds if r >= 2) or sorted(m_rounds)
    lengths = {r: (m_rounds[r][1] - m_rounds[r][0]) / 1e6 for r in steady}
    median_s = statistics.median(lengths.values())
    predicted_s = max(e["ts"] + e["dur"] for e in p_spans) / 1e6
    print(f"measured  {a.measured}: rounds {steady[0]}..{steady[-1]}, median round "
          f"{median_s:.3f} s (first span to last, every rank)")
    print(f"predicted {a.predicted}: round {predicted_s:.3f} s; measured / predicted "
          f"{median_s / predicted_s:.2f}")
    m = per_round(m_spans, set(steady))
    p = per_round(p_spans, {1})
    print()
    print("per round            |     measured: spans    ms   cpu ms |    predicted: spans    ms "
          "  cpu ms | ratio ms  cpu")
    ranks = sorted({k[0] for k in m} | {k[0] for k in p})
    for r in ranks:
        print(names.get(r, p_names.get(r, f"rank {r}")))
        tot_m = [0.0, 0.0]
        tot_p = [0.0, 0.0]
        for act in ORDER:
            mm, pp = m.get((r, act)), p.get((r, act))
            if mm is None and pp is None:
                continue
            mm = mm or (0, 0.0, 0.0)
            pp = pp or (0, 0.0, 0.0)
            if act in COMPUTE:
                tot_m = [tot_m[0] + mm[1], tot_m[1] + mm[2]]
                tot_p = [tot_p[0] + pp[1], tot_p[1] + pp[2]]
            print(f"  {act:18s} | {mm[0]:17.1f} {mm[1]:6.1f} {mm[2]:8.1f} | {pp[0]:18.1f} "
                  f"{pp[1]:6.1f} {pp[2]:8.1f} | {ratio(mm[1], pp[1])} {ratio(mm[2], pp[2])}")
        print(f"  {'compute':18s} | {'':17s} {tot_m[0]:6.1f} {tot_m[1]:8.1f} | {'':18s} "
              f"{tot_p[0]:6.1f} {tot_p[1]:8.1f} | {ratio(tot_m[0], tot_p[0])} "
              f"{ratio(tot_m[1], tot_p[1])}")
    mc, pc = concurrency(m_spans, steady), concurrency(p_spans, [1])
    print()
    print("ranks computing at once (ms per round, from a round's first span to its last):")
    for n in sorted(set(mc) | set(pc)):
        print(f"  {n} rank(s): measured {mc.get(n, 0.0):7.1f}, predicted {pc.get(n, 0.0):7.1f}")
    if a.plot:
        # The measured round nearest the median length: a typical one, not the slowest.
        pick = min(steady, key=lambda r: abs(lengths[r] - median_s))
        plot(a.plot, m_spans, pick, p_spans, {**p_names, **names})
        print(f"\nplot: {a.plot} (measured round {pick}, {lengths[pick]:.3f} s)")


if __name__ == "__main__":
    main()
