"""Time the numpy reference forwards against torch.nn.functional on CPU (not a test).

The reference is written to be exact (float64 internally, one rounding at the end) and readable, not
fast; this script says how much that costs, on the shapes the book talks about:

- (64, 128, 768) float32, a (B, S, D) residual stream: LayerNorm and RMSNorm over the last axis;
- (32, 64, 56, 56) float32, an (N, C, H, W) feature map: BatchNorm (training), GroupNorm (32 groups),
  InstanceNorm.

Both sides run in the same process on the same arrays; each timing is the median of ``--reps`` runs
after one warm-up run. By default torch uses one thread, like numpy's (single-threaded) elementwise
code; pass ``--torch-threads 0`` to keep torch's default.

Usage::

    .venv/bin/python scripts/benchmark_reference.py [--reps 9] [--torch-threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import normcourse.reference as ref


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up: first-touch allocations, torch's kernel dispatch caches
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cases():
    rng = np.random.default_rng(0)
    bsd = rng.normal(size=(64, 128, 768)).astype(np.float32)
    nchw = rng.normal(size=(32, 64, 56, 56)).astype(np.float32)
    tb, tn = torch.from_numpy(bsd), torch.from_numpy(nchw)
    d, c = bsd.shape[-1], nchw.shape[1]
    gamma_d, gamma_c = np.ones(d, np.float32), np.ones(c, np.float32)
    beta_d, beta_c = np.zeros(d, np.float32), np.zeros(c, np.float32)
    tgd, tbd, tgc, tbc = (torch.from_numpy(a) for a in (gamma_d, beta_d, gamma_c, beta_c))
    yield ("layer_norm", bsd.shape, lambda: ref.layer_norm(bsd, (d,), gamma_d, beta_d),
           lambda: F.layer_norm(tb, (d,), tgd, tbd))
    yield ("rms_norm", bsd.shape, lambda: ref.rms_norm(bsd, (d,), gamma_d, eps=1e-6),
           lambda: F.rms_norm(tb, [d], tgd, 1e-6))
    yield ("batch_norm (train)", nchw.shape,
           lambda: ref.batch_norm(nchw, np.zeros(c), np.ones(c), gamma_c, beta_c, training=True),
           lambda: F.batch_norm(tn, torch.zeros(c), torch.ones(c), tgc, tbc, training=True))
    yield ("group_norm (G=32)", nchw.shape, lambda: ref.group_norm(nchw, 32, gamma_c, beta_c),
           lambda: F.group_norm(tn, 32, tgc, tbc))
    yield ("instance_norm", nchw.shape, lambda: ref.instance_norm(nchw), lambda: F.instance_norm(tn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="timed repetitions per case (median reported)")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads; 0 = torch's default")
    args = parser.parse_args()
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    print(f"numpy {np.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, median of {args.reps} reps, float32 input")
    header = f"{'norm':<20} {'shape':<18} {'numpy (s)':>10} {'torch (s)':>10} {'numpy/torch':>12}"
    print(header)
    print("-" * len(header))
    with torch.no_grad():
        for name, shape, ours, theirs in cases():
            t_ours, t_torch = median_seconds(ours, args.reps), median_seconds(theirs, args.reps)
            print(f"{name:<20} {str(shape):<18} {t_ours:>10.4f} {t_torch:>10.4f} {t_ours / t_torch:>12.1f}")


if __name__ == "__main__":
    main()
