#!/usr/bin/python3
"""PyTorch side of tools/same_start_vs_torch.sh: fmnist-cnn trained by PyTorch from exactly the
start mpsl trains from, so that the two trajectories can be compared step by step.

    torch_same_start.py export --seed S --output init.h5
        The initial weights of ../shared/baselines/torch_baseline.py for seed S
        (torch.manual_seed(S), then the net is built), as an mpsl model file (mpsl's plain
        layouts: conv OIHW, linear [out, in] in NCHW flatten order), for `mpsl train
        --init-model init.h5`.
    torch_same_start.py train --init init.h5 --data train.h5 --test-data test.h5 --seed S
                              [--steps N] [--batch 64] [--lr 0.01] [--momentum 0.9]
                              [--threads 2] [--output after.h5]
        Trains from init.h5 on mpsl's dataset files (the images normalised with the file's
        mean/std, as mpsl does) in mpsl's batch order for seed S (train::epoch_order of owner 0,
        reimplemented below), SGD without weight decay, the last partial batch dropped; prints
        one RESULT line with the test accuracy and writes the weights as an mpsl model file.

Run with Debian's interpreter (/usr/bin/python3: python3-torch, python3-h5py, python3-numpy).
"""
import argparse
import sys

import h5py
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

M64 = (1 << 64) - 1
# torch Sequential index -> mpsl unit index (fmnist-cnn: 9 units, see `mpsl inspect`).
UNIT_OF_LAYER = {0: 0, 2: 1, 5: 3, 7: 4, 11: 7, 13: 8}


def make_model():  # the net of ../shared/baselines/torch_baseline.py, layer for layer
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


# ---- mpsl's random streams (include/mpsl/core/rng.hpp), bit for bit -----------------------
def mix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def hash3(seed, stream, counter):
    return mix64(mix64(mix64(seed) ^ stream) ^ counter)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Xoshiro256ss:
    def __init__(self, seed, stream):
        x = hash3(seed, stream, 0x5EED)
        self.s = []
        for _ in range(4):
            x = mix64(x)
            self.s.append(x)

    def next(self):
        s = self.s
        result = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def below(self, n):
        return (self.next() * n) >> 64


def epoch_order(count, seed, owner, epoch):
    """train::epoch_order for a shard 0..count-1 (one owner: the whole training set)."""
    order = list(range(count))
    rng = Xoshiro256ss(seed, 0xDA7A000000 ^ (owner << 20) ^ epoch)
    for i in range(count - 1, 0, -1):
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


# ---- mpsl model files ---------------------------------------------------------------------
def save_mpsl_model(model, path, mean, std, step):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "mpsl-model"
        f.attrs["format_version"] = np.int64(1)
        f.attrs["mpsl_version"] = "torch-" + torch.__version__
        f.attrs["model"] = "fmnist-cnn"
        f.attrs["classes"] = np.int64(10)
        f.attrs["input_shape"] = np.array([1, 28, 28], dtype=np.int64)
        f.attrs["step"] = np.int64(step)
        f.attrs["input_mean"] = np.array(mean, dtype=np.float32)
        f.attrs["input_std"] = np.array(std, dtype=np.float32)
        for layer, unit in UNIT_OF_LAYER.items():
            m = model[layer]
            g = f.create_group(f"units/{unit:03d}")
            g.attrs["type"] = "conv" if isinstance(m, nn.Conv2d) else "linear"
            g.attrs["description"] = "exported from PyTorch"
            g.create_dataset("weight", data=m.weight.detach().numpy().astype(np.float32))
            g.create_dataset("bias", data=m.bias.detach().numpy().astype(np.float32))


def load_mpsl_model(model, path):
    with h5py.File(path, "r") as f:
        if f.attrs.get("model") not in ("fmnist-cnn", b"fmnist-cnn"):
            sys.exit(f"{path}: not an fmnist-cnn model file")
        with torch.no_grad():
            for layer, unit in UNIT_OF_LAYER.items():
                m = model[layer]
                m.weight.copy_(torch.from_numpy(f[f"units/{unit:03d}/weight"][...]))
                m.bias.copy_(torch.from_numpy(f[f"units/{unit:03d}/bias"][...]))


def load_dataset(path):
    """Images normalised as mpsl does: (pixel/255 - mean[c]) / std[c], the file's own mean/std."""
    with h5py.File(path, "r") as f:
        images = f["images"][...]
        labels = f["labels"][...].astype(np.int64)
        mean = np.asarray(f.attrs["mean"], dtype=np.float32).reshape(-1)
        std = np.asarray(f.attrs["std"], dtype=np.float32).reshape(-1)
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels), mean, std


def cmd_export(a):
    torch.manual_seed(a.seed)  # as torch_baseline.py: the seed, then the net
    save_mpsl_model(make_model(), a.output, [0.2860], [0.3530], 0)


def cmd_train(a):
    torch.set_num_threads(a.threads)
    xtr, ytr, mean, std = load_dataset(a.data)
    xte, yte, _, _ = load_dataset(a.test_data)
    model = make_model()
    load_mpsl_model(model, a.init)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
    n = len(xtr)
    per_epoch = n // a.batch
    steps = a.steps if a.steps > 0 else per_epoch
    order, order_epoch = None, -1
    loss_sum = 0.0
    for step in range(steps):
        epoch, in_epoch = divmod(step, per_epoch)
        if epoch != order_epoch:
            order = torch.tensor(epoch_order(n, a.seed, 0, epoch))
            order_epoch = epoch
        idx = order[in_epoch * a.batch:(in_epoch + 1) * a.batch]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        loss.backward()
        opt.step()
        loss_sum += loss.item()
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(xte), 1000):
            correct += (model(xte[i:i + 1000]).argmax(1) == yte[i:i + 1000]).sum().item()
    print(f"RESULT steps={steps} train_loss={loss_sum / steps:.6f} "
          f"test_acc={correct / len(xte):.4f}", flush=True)
    if a.output:
        save_mpsl_model(model, a.output, mean, std, steps)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--seed", type=int, required=True)
    e.add_argument("--output", required=True)
    t = sub.add_parser("train")
    t.add_argument("--init", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--test-data", required=True)
    t.add_argument("--seed", type=int, required=True)
    t.add_argument("--steps", type=int, default=0, help="0 = one epoch")
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--output", default="")
    a = p.parse_args()
    {"export": cmd_export, "train": cmd_train}[a.cmd](a)


if __name__ == "__main__":
    main()
