#!/usr/bin/python3
"""Compares two mpsl model files tensor by tensor.

    compare_models.py A.h5 B.h5 [--tolerance REL]

With no tolerance the tensors must be bitwise identical. With one, the largest difference of
each tensor relative to that tensor's largest magnitude must stay within it. Prints the worst
tensor and exits 1 when the files differ beyond what is allowed."""
import sys

import h5py
import numpy as np


def tensors(path):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[...]
        f.visititems(visit)
    return out


def main():
    args = sys.argv[1:]
    tol = None
    if "--tolerance" in args:
        i = args.index("--tolerance")
        tol = float(args[i + 1])
        del args[i:i + 2]
    a, b = tensors(args[0]), tensors(args[1])
    if sorted(a) != sorted(b):
        print(f"different tensors: {sorted(set(a) ^ set(b))}")
        return 1
    worst, worst_name, identical = 0.0, "", True
    for name in sorted(a):
        x, y = a[name], b[name]
        if x.shape != y.shape:
            print(f"{name}: shapes {x.shape} vs {y.shape}")
            return 1
        if not np.array_equal(x, y):
            identical = False
        scale = max(float(np.max(np.abs(x))), 1e-30)
        rel = float(np.max(np.abs(x.astype(np.float64) - y))) / scale
        if rel > worst:
            worst, worst_name = rel, name
    print(f"{len(a)} tensors, bitwise identical: {identical}, "
          f"max relative difference {worst:.3e} ({worst_name or '-'})")
    if tol is None:
        return 0 if identical else 1
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
