#!/usr/bin/python3
"""Compares two mpsl checkpoint folders: every rank file tensor by tensor (weights, BatchNorm
statistics and momentum) and attribute by attribute (optimiser steps, owner cursors, round
tallies), and the manifests' position and topology.

    checkpoint_compare.py A_FOLDER B_FOLDER

Exits 0 when everything is bitwise identical, else prints the first differences and exits 1.
What describes the writing rather than the state is not compared: the manifests' times, sizes,
file checksums and options, and the rank files' `config` attribute (the options as given:
--rounds and the checkpoint options may differ between the runs)."""
import json
import os
import sys

import h5py
import numpy as np


def rank_file(path):
    tensors, attrs = {}, {}
    with h5py.File(path, "r") as f:
        attrs["/"] = {k: f.attrs[k] for k in f.attrs}

        def visit(name, obj):
            attrs[name] = {k: obj.attrs[k] for k in obj.attrs}
            if isinstance(obj, h5py.Dataset):
                tensors[name] = obj[...]
        f.visititems(visit)
    return tensors, attrs


def same_value(x, y):
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return np.array_equal(np.asarray(x), np.asarray(y))
    return x == y


def main():
    a_dir, b_dir = sys.argv[1], sys.argv[2]
    problems = []
    ma = json.load(open(os.path.join(a_dir, "manifest.json")))
    mb = json.load(open(os.path.join(b_dir, "manifest.json")))
    for key in ("model", "position", "topology", "randomness", "format_version"):
        if ma[key] != mb[key]:
            problems.append(f"manifest {key}: {ma[key]} vs {mb[key]}")
    files = [r["file"] for r in ma["ranks"]]
    if files != [r["file"] for r in mb["ranks"]]:
        problems.append(f"rank files differ: {files} vs {[r['file'] for r in mb['ranks']]}")
    n_tensors = n_attrs = n_momentum = n_nonzero = 0
    for name in files:
        ta, aa = rank_file(os.path.join(a_dir, name))
        tb, ab = rank_file(os.path.join(b_dir, name))
        if sorted(ta) != sorted(tb):
            problems.append(f"{name}: different tensors {sorted(set(ta) ^ set(tb))[:5]}")
            continue
        for t in sorted(ta):
            n_tensors += 1
            n_momentum += "/momentum/" in t
            n_nonzero += "/momentum/" in t and bool(np.any(ta[t] != 0))
            if ta[t].shape != tb[t].shape or not np.array_equal(ta[t], tb[t]):
                diff = np.max(np.abs(ta[t].astype(np.float64) - tb[t])) if ta[t].shape == tb[t].shape else "shape"
                problems.append(f"{name}:{t}: differs (max abs difference {diff})")
        for obj in sorted(aa):
            if sorted(aa[obj]) != sorted(ab.get(obj, {})):
                problems.append(f"{name}:{obj}: attributes {sorted(aa[obj])} vs {sorted(ab.get(obj, {}))}")
                continue
            for k in aa[obj]:
                if obj == "/" and k == "config":
                    continue  # the options as given: --rounds and the checkpoint options may differ
                n_attrs += 1
                if not same_value(aa[obj][k], ab[obj][k]):
                    problems.append(f"{name}:{obj} attribute {k}: {aa[obj][k]} vs {ab[obj][k]}")
    if problems:
        print(f"{len(problems)} difference(s): " + "; ".join(problems[:6]))
        return 1
    print(f"{len(files)} rank files, {n_tensors} tensors ({n_momentum} momentum, {n_nonzero} of "
          f"them non-zero) and {n_attrs} attributes bitwise identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
