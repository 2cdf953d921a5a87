"""Do the moment products slow down the forward passes that follow them?

Usage: ``python benchmarks/contention.py [--repeats 5]`` (add
``OPENBLAS_THREAD_TIMEOUT=4`` in front to compare). Runs the ResNet-18 report's
forward passes (512 images, batches of 128, 2 transforms: each batch as it is and
transformed by each, as the report shares the original pass) four ways, in turn,
and prints the median time of the forward passes alone in each — whatever runs
between the batches is not timed:

- ``plain``: nothing between the batches;
- ``hooks``: the report's capture hooks on its 10 layers (outputs kept per batch);
- ``blas``: three float32 SYRK calls of 4,096 × 1,024 rows after each batch, as the
  moment pass makes them (numpy's OpenBLAS);
- ``sleep``: a 50 ms pause instead, for the time between the batches alone.

OpenBLAS's idle threads spin for a while after each call; on a machine with as
many threads as cores they then hold the cores torch's next pass needs, and
``blas`` is slower than ``sleep``. The numbers are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import run as R  # noqa: E402

from seis_sklearn._blas import syrk_lower  # noqa: E402

MODES = ("plain", "hooks", "blas", "sleep")


def forward_seconds(model, layers, transforms, x, mode, chunk, product):
    """Seconds spent in the forward passes of one report's batches, under ``mode``."""
    modules = dict(model.named_modules())
    kept = []
    hook = lambda module, args, output: kept.append(output)  # noqa: E731
    handles = [modules[n].register_forward_hook(hook) for n in layers] if mode == "hooks" else []

    def between():
        if mode == "blas":
            for _ in range(3):
                syrk_lower(chunk, product)
        elif mode == "sleep":
            time.sleep(0.05)
        kept.clear()

    try:
        return R._forward_alone(model, x, transforms, 128, between)
    finally:
        for handle in handles:
            handle.remove()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args(argv)
    model, layers, _, transforms = R._network("resnet18")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.images, 3, 64, 64), dtype=np.float32)
    chunk = rng.standard_normal((4096, 1024), dtype=np.float32)
    product = np.zeros((1024, 1024), np.float32)
    forward_seconds(model, layers, transforms, x, "plain", chunk, product)  # warm up
    times = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            times[mode].append(forward_seconds(model, layers, transforms, x, mode, chunk, product))
    timeout = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "unset")
    print(R._machine() + f"; OPENBLAS_THREAD_TIMEOUT={timeout}")
    for mode, values in times.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{mode:6s} forward passes {np.median(values):.2f} s (runs: {runs})")


if __name__ == "__main__":
    main()
