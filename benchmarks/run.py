"""Speed and memory of seis-sklearn against baselines, measured in one run.

Usage::

    python benchmarks/run.py                  # every case at full size (about 10 minutes)
    python benchmarks/run.py --scale 0.125    # the same cases with N scaled down
    python benchmarks/run.py --case spatial --case wide

Every case runs in a fresh worker process, so that its peak memory is its own:
the worker builds the data, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``) and reads ``VmHWM`` after the measured call.
Times are medians of ``--repeats`` runs, and only ratios measured within one
run are compared: these machines are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 2**20


# -- measuring -------------------------------------------------------------------------
def _status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak():
    """Reset the peak RSS of this process to its current RSS (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_rss():
    """Peak RSS of this process since the last :func:`reset_peak`, bytes."""
    return _status("VmHWM")


def current_rss():
    return _status("VmRSS")


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def interleaved_medians(fns, repeats):
    """Median time of each function, run in turn ``repeats`` times (a, b, a, b, …).

    A ratio of two medians taken one after the other reads a drift of the machine
    (other tenants, clock changes) as a difference between the two; taken in turn,
    both see the same machine.
    """
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


def ratio_row(case, what, ours, base, limit, **extra):
    """A result row whose target is ``ours / base <= limit``."""
    return dict(
        case=case, what=what, ours=ours, base=base, target=f"ratio <= {limit}",
        ok=ours / base <= limit, **extra,
    )  # fmt: skip


def smooth_activations(n, c, h, w, seed=0, out=None):
    """Spatially correlated float32 activations, generated 256 samples at a time."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, c, h, w), dtype=np.float32) if out is None else out
    for start in range(0, n, 256):
        x = rng.standard_normal((min(256, n - start), c, h, w), dtype=np.float32)
        x += np.roll(x, 1, axis=3) + np.roll(x, 1, axis=2)
        out[start : start + 256] = x
    return out


# -- baselines written from the definitions ---------------------------------------------
def direct_seis(A, B, n_components=0.99, reg=1e-6):
    """SPEC §2.2–2.3 written out with numpy/scipy: centre, SVD of the stacked rows, CCA."""
    from scipy import linalg

    from seis_sklearn import matricize

    P, Q = matricize(A), matricize(B)
    m, d = P.shape
    Z = np.empty((2 * m, d))
    Z[:m], Z[m:] = P, Q
    Z[:m] -= Z[:m].mean(axis=0)
    Z[m:] -= Z[m:].mean(axis=0)
    _, s, Vt = linalg.svd(Z, full_matrices=False, overwrite_a=True, check_finite=False)
    lam = s**2 / (2 * m)
    k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), n_components) + 1)
    X = (P - P.mean(axis=0)) @ Vt[:k].T
    Y = (Q - Q.mean(axis=0)) @ Vt[:k].T

    def inv_sqrt(S):
        w, V = np.linalg.eigh(S + reg * lam[k - 1] * np.eye(k))
        return (V / np.sqrt(w)) @ V.T

    K = inv_sqrt(X.T @ X / m) @ (X.T @ Y / m) @ inv_sqrt(Y.T @ Y / m)
    rho = np.clip(np.linalg.svd(K, compute_uv=False), 0, 1)
    return rho.mean(), max(0.0, np.trace(K)) / k


# -- cases (each runs inside a worker) ---------------------------------------------------
def case_spatial(scale, repeats):
    """seis_score on N·C × 1,024, float32, in memory; vs one BLAS product and the direct code."""
    from seis_sklearn import matricize, seis_score

    n = max(64, int(4096 * scale))
    A = smooth_activations(n, 64, 32, 32, seed=0)
    B = np.roll(A, 2, axis=3)
    input_bytes = A.nbytes + B.nbytes
    m, d = matricize(A).shape
    label = f"spatial m={m:,} d={d:,} f32"
    seis_score(A[:64], B[:64], cv=None)  # warm-up outside the measurement
    before = current_rss()
    reset_peak()
    seis_score(A, B, cv=None)
    extra = peak_rss() - before
    Z = np.hstack([matricize(A), matricize(B)])  # the baseline's input, built beforehand
    ours, base = interleaved_medians([lambda: seis_score(A, B, cv=None), lambda: Z.T @ Z], repeats)
    Z = None  # the baseline's copy goes before the direct code runs
    bound = 2 * (2 * d) ** 2 * 8 + 64 * MB
    rows = [
        dict(
            case=label,
            what="peak RSS above the input",
            ours=extra / MB,
            target=f"<= {bound / MB:.0f} MB (2·(2d)²·8 B + 64 MB)",
            ok=extra <= bound,
        )
    ]
    rows.append(ratio_row(label, "one BLAS product [P Q]^T[P Q] (f32)", ours, base, 1.25))
    direct = median_time(lambda: direct_seis(A, B), 1)
    rows.append(
        dict(
            case=label,
            what="direct numpy/scipy from the definitions",
            ours=ours,
            base=direct,
            target="ratio <= 0.1 (10x faster)",
            ok=ours / direct <= 0.1,
        )
    )
    del input_bytes
    return rows


def case_cca(scale, repeats):
    """Denoised data, k = 32: seis_score vs sklearn's CCA(n_components=32)."""
    from sklearn.cross_decomposition import CCA

    from seis_sklearn import seis_score

    m = max(4096, int(262_144 * scale))
    rng = np.random.default_rng(1)
    X = rng.standard_normal((m, 32)) @ rng.standard_normal((32, 32))
    Y = X @ rng.standard_normal((32, 32)) + rng.standard_normal((m, 32))
    ours = median_time(lambda: seis_score(X, Y, n_components=32, cv=None), repeats)
    sub = min(m, 16_384)  # sklearn's NIPALS costs O(m) per iteration: time a subsample
    cca = CCA(n_components=32, max_iter=500)
    start = time.perf_counter()
    cca.fit(X[:sub], Y[:sub])
    base = (time.perf_counter() - start) * m / sub
    note = "" if sub == m else f" (timed on {sub:,} rows, x{m / sub:g} linear in m)"
    return [
        dict(
            case=f"denoised m={m:,} k=32 f64",
            what="sklearn CCA(n_components=32)" + note,
            ours=ours,
            base=base,
            target="ratio <= 0.005 (200x faster)",
            ok=ours / base <= 0.005,
        )
    ]


def case_memmap(scale, repeats):
    """A pair of .npy files read through memory maps: peak RSS must not grow with N."""
    from seis_sklearn import seis_score

    n = max(256, int(8192 * scale))
    folder = Path(tempfile.mkdtemp(prefix="seis-bench-"))
    try:
        paths = [folder / "a.npy", folder / "b.npy"]
        for i, path in enumerate(paths):
            mm = np.lib.format.open_memmap(
                path, mode="w+", dtype=np.float32, shape=(n, 64, 32, 32)
            )
            smooth_activations(n, 64, 32, 32, seed=0, out=mm)
            if i:
                mm[:] = np.roll(mm, 2, axis=3)
            mm.flush()
            del mm
        size = sum(p.stat().st_size for p in paths)
        A, B = (np.load(p, mmap_mode="r") for p in paths)
        before = current_rss()
        reset_peak()
        start = time.perf_counter()
        seis_score(A, B, cv=None)
        elapsed = time.perf_counter() - start
        extra = peak_rss() - before
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return [
        dict(
            case=f"memmap pair {size / 2**30:.1f} GiB f32",
            what=f"peak RSS above start ({elapsed:.1f} s)",
            ours=extra / MB,
            target="<= 1024 MB",
            ok=extra <= 1024 * MB,
        )
    ]


def case_wide(scale, repeats):
    """Flatten matricization of big maps: N = 2,000, d = 262,144, float32 (Gram solver)."""
    from seis_sklearn import SEISScorer, seis_score

    n = max(100, int(2000 * scale))
    A = smooth_activations(n, 256, 32, 32, seed=2)
    B = np.roll(A, 1, axis=1)  # a channel permutation: visible to flatten only
    d = 256 * 32 * 32
    label = f"wide flatten N={n:,} d={d:,} f32"
    before = current_rss()
    reset_peak()
    start = time.perf_counter()
    result = seis_score(A, B, matricization="flatten", cv=None)
    elapsed = time.perf_counter() - start
    extra = peak_rss() - before
    start = time.perf_counter()
    scorer = SEISScorer(matricization="flatten").fit(A, B)  # + the V_k pass for held-out
    fit_elapsed = time.perf_counter() - start
    return [
        dict(
            case=label,
            what=f"seis_score (Gram solver, k={result.n_components})",
            ours=elapsed,
            target="< 60 s",
            ok=elapsed < 60,
        ),
        dict(
            case=label,
            what="peak RSS above the input, seis_score",
            ours=extra / MB,
            target=f"no d×d ({d * d * 8 / 2**30:.0f} GiB)",
            ok=extra < d * d * 8,
        ),
        dict(
            case=label,
            what=f"SEISScorer.fit incl. V_k (solver={scorer.solver_})",
            ours=fit_elapsed,
            target="(held-out ready)",
            ok=True,
        ),
    ]


def _npy_stack(folder, n, per_file):
    """The spatial case's data as one .npy file per batch of samples (the adapters' way)."""
    paths_a, paths_b = [], []
    for i, start in enumerate(range(0, n, per_file)):
        a = smooth_activations(min(per_file, n - start), 64, 32, 32, seed=i)
        paths_a.append(folder / f"a{i:04d}.npy")
        paths_b.append(folder / f"b{i:04d}.npy")
        np.save(paths_a[-1], a)
        np.save(paths_b[-1], np.roll(a, 2, axis=3))
    return paths_a, paths_b


def _dask_stack(paths):
    """The docs' recipe: a dask array over .npy files, each read as a memory map."""
    import dask.array as da
    from dask import delayed

    load = delayed(np.load, pure=True)
    parts = []
    for p in paths:
        head = np.load(p, mmap_mode="r")
        parts.append(da.from_delayed(load(str(p), mmap_mode="r"), head.shape, head.dtype))
    return da.concatenate(parts)


def _local_cluster(**kwargs):
    import warnings

    from dask.distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            **kwargs,
        )
    return cluster, Client(cluster)


def case_dask(scale, repeats):
    """The spatial case through Dask: a 2-worker LocalCluster and threads vs in memory."""
    import dask

    from seis_sklearn import seis_score

    n = max(256, int(4096 * scale))
    folder = Path(tempfile.mkdtemp(prefix="seis-bench-"))
    try:
        paths_a, paths_b = _npy_stack(folder, n, 256)
        A = np.concatenate([np.load(p) for p in paths_a])
        B = np.concatenate([np.load(p) for p in paths_b])
        seis_score(A[:64], B[:64], cv=None)
        in_memory = median_time(lambda: seis_score(A, B, cv=None), repeats)
        label = f"dask spatial N={n:,} f32"
        dA, dB = _dask_stack(paths_a), _dask_stack(paths_b)
        with dask.config.set(scheduler="threads"):
            threads = median_time(lambda: seis_score(dA, dB, cv=None), repeats)
        cluster, client = _local_cluster()
        with cluster, client:
            # workers import and compile outside the measurement
            seis_score(dA[:64], dB[:64], cv=None)
            distributed = median_time(lambda: seis_score(dA, dB, cv=None), repeats)
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return [
        ratio_row(label, "LocalCluster (2 processes) vs in memory", distributed, in_memory, 1.5),
        ratio_row(label, "threaded scheduler vs in memory", threads, in_memory, 1.5),
    ]


def case_dask_ooc(scale, repeats):
    """Out of core: .npy stacks 4x larger than a worker's memory limit, on a LocalCluster."""
    from seis_sklearn import seis_score

    n = max(512, int(8192 * scale))
    folder = Path(tempfile.mkdtemp(prefix="seis-bench-"))
    try:
        paths_a, paths_b = _npy_stack(folder, n, 256)
        size = sum(p.stat().st_size for p in paths_a + paths_b)
        limit = max(512 * MB, size // 4)
        dA, dB = _dask_stack(paths_a), _dask_stack(paths_b)
        cluster, client = _local_cluster(memory_limit=limit)
        with cluster, client:  # a worker over its limit is killed: KilledWorker fails the case
            start = time.perf_counter()
            seis_score(dA, dB, cv=None)
            elapsed = time.perf_counter() - start
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    return [
        dict(
            case=f"dask out of core {size / 2**30:.1f} GiB",
            what=f"completes; workers limited to {limit / MB:.0f} MB",
            ours=elapsed,
            target="no worker killed",
            ok=True,
        )
    ]


# -- the real job: a layerwise report of a network ---------------------------------------
class _Stopwatch:
    """Seconds spent inside chosen functions, by label; a call inside another timed
    call counts for the outer one only (so that the labels add up)."""

    def __init__(self):
        self.seconds, self._depth = {}, 0
        self.on = True  # False: calls are not counted

    def wrap(self, owner, name, label):
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            depth = self._depth
            self._depth = depth + 1
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self._depth = depth
                if depth == 0 and self.on:
                    elapsed = time.perf_counter() - start
                    self.seconds[label] = self.seconds.get(label, 0.0) + elapsed

        setattr(owner, name, timed)


def _forward_alone(model, x, transforms, batch_size, between=None, shared=True):
    """Seconds of the forward passes a report makes; ``x`` a numpy array, or a tensor
    already where the model is. ``shared``: each batch once as it is and once per
    transform (T + 1 passes, the report's default); else original and transformed
    per transform (2T, ``transforms_per_pass=1``). ``between``: called after each
    batch's passes, outside the timing (``benchmarks/contention.py``)."""
    import torch

    groups = [list(transforms.values())] if shared else [[t] for t in transforms.values()]
    seconds = 0.0
    with torch.inference_mode():
        for group in groups:
            for lo in range(0, len(x), batch_size):
                start = time.perf_counter()
                batch = torch.as_tensor(x[lo : lo + batch_size])
                model(batch)
                for transform in group:
                    model(transform(batch))
                seconds += time.perf_counter() - start
                if between is not None:
                    between()
    return seconds


@contextlib.contextmanager
def _as_many_images():
    """Reports inside stream as one of many more images would: each layer into moments
    from its first batch (rows never kept), and ``transforms_per_pass="auto"`` sizing
    its passes by those moments."""
    from seis_sklearn.adapters import _common

    import seis_sklearn._accumulate as accumulate

    rows_first, sized = accumulate.RowsFirst, _common.statistics_bytes

    def as_moments(shape, itemsize, n_samples, seis_params, n_prefix=0):
        return sized(shape, itemsize, None, seis_params, n_prefix)

    accumulate.RowsFirst = functools.partial(rows_first, budget=0)
    _common.statistics_bytes = as_moments
    try:
        yield
    finally:
        accumulate.RowsFirst, _common.statistics_bytes = rows_first, sized


def _network(network):
    """(model, layers, report options, transforms) of a model-level case."""
    from functools import partial

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import models
    from seis_sklearn.adapters.torch import transforms as TT

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    transforms = {"rot90": TT.rot90, "shift 4px": partial(TT.translate, shift=(0, 4))}
    if network == "resnet18":
        return models.ResNet18().eval(), models.RESNET18_LAYERS, {}, transforms
    return models.ViTTiny().eval(), models.VIT_LAYERS, {"tokens": "patch"}, transforms


def _model_report(network, scale, repeats, matricization="auto"):
    """report time / forward time for one network, its breakdown, peak RSS for N and 2N."""
    from seis_sklearn.adapters.torch import layerwise_seis

    import seis_sklearn._accumulate as accumulate
    import seis_sklearn._fit as fitting
    import seis_sklearn._moments as moments
    import seis_sklearn._scorer as scorer
    import seis_sklearn._torch as torch_moments

    model, layers, options, transforms = _network(network)
    n = max(64, int(512 * scale))
    x = np.random.default_rng(0).standard_normal((n, 3, 64, 64), dtype=np.float32)

    def report(count, per_pass="auto"):
        return layerwise_seis(
            model, x[:count], transforms, layers=layers, progress=False, batch_size=128,
            matricization=matricization, transforms_per_pass=per_pass, **options,
        )  # fmt: skip

    report(64)  # compile and warm up outside the measurements
    watch = _Stopwatch()
    for owner in (moments.ArrayAccumulator, torch_moments.TorchAccumulator, accumulate.RowsFirst):
        watch.wrap(owner, "add", "moment pass")
        watch.wrap(owner, "result", "moment pass")
    watch.wrap(fitting, "accumulate_gram", "Gram pass")
    watch.wrap(fitting, "gram_components", "Gram pass")
    watch.wrap(fitting, "pooled_basis", "basis")
    watch.wrap(fitting, "gram_basis", "basis")
    watch.wrap(fitting, "fit_cca", "CCA")
    watch.wrap(scorer.SEISScorer, "_score_moments", "held-out")
    watch.wrap(scorer.SEISScorer, "_score_rows", "held-out")
    hook = {"t": 0.0, "on": False}  # forward time inside the reports only

    def forward_started(*_):
        hook["start"] = time.perf_counter()

    def forward_ended(*_):
        if hook["on"]:
            hook["t"] += time.perf_counter() - hook["start"]

    model.register_forward_pre_hook(forward_started)
    model.register_forward_hook(forward_ended)

    def timed_report():
        hook["on"] = watch.on = True
        report(n)
        hook["on"] = watch.on = False

    watch.on = False  # the breakdown is the default report's
    forward, total, forward_2t, one_by_one = interleaved_medians(
        [
            lambda: _forward_alone(model, x, transforms, 128),
            timed_report,
            lambda: _forward_alone(model, x, transforms, 128, shared=False),
            lambda: report(n, per_pass=1),
        ],
        repeats,
    )
    parts = {k: v / repeats for k, v in {"forward (hooks)": hook["t"], **watch.seconds}.items()}
    # peak RSS in fresh processes (an allocator's history would blur it), N and 2N images;
    # "moments": every layer streamed into moments (rows never kept), whose memory does
    # not depend on N; the default keeps a layer's rows while they are smaller
    peak, peak_double = (_rss_probe(network, c, matricization, "rows") for c in (n, 2 * n))
    bound, bound_double = (_rss_probe(network, c, matricization, "moments") for c in (n, 2 * n))
    breakdown = ", ".join(f"{k} {v:.2f} s" for k, v in parts.items())
    label = f"{network} report N={n}" + ("" if matricization == "auto" else f" {matricization}")
    return [
        ratio_row(
            label,
            "report / the same forward passes alone (T + 1 per batch)",
            total,
            forward,
            1.5,
            note=breakdown,
        ),
        ratio_row(
            label,
            "transforms_per_pass=1 / its forward passes alone (2T per batch)",
            one_by_one,
            forward_2t,
            1.5,
        ),
        dict(
            case=label,
            what="report / the same report one transform at a time",
            ours=total,
            base=one_by_one,
            target="informational (< 1: shared passes pay)",
            ok=True,
        ),
        dict(
            case=label,
            what=f"peak RSS, moments only: 2N images vs N ({bound / MB:.0f} MB)",
            ours=bound_double / MB,
            target="independent of N (within 10% + 32 MB)",
            ok=bound_double <= 1.1 * bound + 32 * MB,
        ),
        dict(
            case=label,
            what=f"peak RSS, rows kept while smaller: 2N images (N: {peak / MB:.0f} MB)",
            ours=peak_double / MB,
            target="<= moments only at 2N + 32 MB",
            ok=max(peak, peak_double) <= bound_double + 32 * MB,
        ),
    ]


def _rss_probe(network, count, matricization, keep):
    """Peak RSS above the start of one report of ``count`` images, in a fresh process.

    glibc's malloc raises its mmap threshold dynamically after large frees, after
    which batch-sized blocks come from the heap and fragment it: measured, peaks of
    333, 511 and 600 MB for 256, 512 and 1,024 images of the ViT case, against
    322, 324 and 329 MB with the threshold fixed. The probe fixes it, so that what
    is measured is what the toolkit keeps, not the allocator's history.
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, __file__, "--rss-probe", f"{network}:{count}:{matricization}:{keep}"],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return int(out.stdout.split()[-1])


def _probe(spec):
    from seis_sklearn.adapters.torch import layerwise_seis

    network, count, matricization, keep = spec.split(":")
    if network == "resnet224":  # the whole process's peak: model, passes and fits
        import torch
        from seis_sklearn.adapters.torch import transforms as TT

        sys.path.insert(0, str(ROOT / "benchmarks"))
        import models

        torch.manual_seed(0)
        x = np.random.default_rng(0).standard_normal((int(count), 3, 224, 224), dtype=np.float32)
        layerwise_seis(models.ResNet18().eval(), x, {"hflip": TT.hflip, "rot90": TT.rot90},
                       batch_size=32, progress=False)  # fmt: skip
        # VmHWM, this process's own peak: ru_maxrss would also count the RSS of the
        # parent at the fork that started it (Linux carries it over the exec), which
        # after the report it just ran is larger than this report's
        print(peak_rss())
        return
    model, layers, options, transforms = _network(network)
    x = np.random.default_rng(0).standard_normal((int(count), 3, 64, 64), dtype=np.float32)
    kwargs = dict(layers=layers, progress=False, batch_size=128, matricization=matricization)
    # "moments": as a report of many more images streams
    with _as_many_images() if keep == "moments" else contextlib.nullcontext():
        layerwise_seis(model, x[:64], transforms, **kwargs, **options)  # imports, compilation
        before = current_rss()
        reset_peak()
        layerwise_seis(model, x, transforms, **kwargs, **options)
    print(peak_rss() - before)


def case_resnet(scale, repeats):
    """ResNet-18 (torchvision's layout), 512 images 3×64×64, rot90 and a 4-px shift,
    the 8 residual blocks + avgpool + fc, layerwise_seis defaults."""
    return _model_report("resnet18", scale, repeats)


def case_resnet_spatial(scale, repeats):
    """The ResNet-18 report with matricization="spatial" (the default before "auto"):
    2×2 maps in spatial mode instead of flatten."""
    return _model_report("resnet18", scale, repeats, matricization="spatial")


def case_vit(scale, repeats):
    """A ViT-Tiny (timm's layout, 8-px patches, 64 tokens + class token), the same images
    and transforms, the 12 blocks + head, patch tokens only."""
    return _model_report("vit_tiny", scale, repeats)


def case_resnet_cuda(scale, repeats):
    """The ResNet-18 report on a CUDA device (the issue's GPU target), where there is one:
    report / its forward passes alone (both synchronised), the bytes copied device →
    host during one report against the bytes of the statistics the host receives, and
    the peak device memory for N and 2N images. Without a CUDA device: one row saying so."""
    import torch

    if not torch.cuda.is_available():
        return _no_cuda(
            "resnet18 report on CUDA", "ratio <= 1.3, device->host bytes <= the statistics'"
        )
    return _device_report("resnet18", scale, repeats, torch.device("cuda"))


def _eigh_seconds(S):
    """Seconds of the eigendecomposition a fit runs (``_blas.eigh_inplace``: LAPACK's
    dsyevd in the matrix's own memory) of a copy of ``S``, the copy not timed."""
    from seis_sklearn._blas import eigh_inplace

    work = S.copy()
    start = time.perf_counter()
    eigh_inplace(work)
    return time.perf_counter() - start


def case_resnet224(scale, repeats):
    """ResNet-18 (torchvision's layout) at the resolution it is used at: 3×224×224
    images, N = 256, hflip and rot90, the default layers, held-out (issue 30). The
    report against its T + 1 forward passes; every fit's algebra against the floor of
    its decompositions (one eigh of the pooled d × d moment and three of k × k:
    the two whitenings and the canonical pairs), measured at the same sizes in the same
    run; peak RSS of a report of 64 and of N images (in fresh processes)."""
    import torch
    from seis_sklearn.adapters.torch import layerwise_seis
    from seis_sklearn.adapters.torch import transforms as TT

    import seis_sklearn._fit as fitting

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import models

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = models.ResNet18().eval()
    n = max(64, int(256 * scale))
    x = np.random.default_rng(0).standard_normal((n, 3, 224, 224), dtype=np.float32)
    transforms = {"hflip": TT.hflip, "rot90": TT.rot90}
    import seis_sklearn._accumulate as accumulate
    import seis_sklearn._cca as cca
    import seis_sklearn._moments as moments
    import seis_sklearn._torch as torch_moments

    fits = []
    real_fit = fitting.fit
    watch = _Stopwatch()  # the report's parts: its moment pass, its decompositions
    for owner in (moments.ArrayAccumulator, torch_moments.TorchAccumulator, accumulate.RowsFirst):
        watch.wrap(owner, "add", "moment pass")
        watch.wrap(owner, "result", "moment pass")
    watch.wrap(cca, "eigh_inplace", "decompositions")

    def timed_fit(stats, params, names=None):
        start, before = time.perf_counter(), watch.seconds.get("decompositions", 0.0)
        out = real_fit(stats, params, names)
        seconds = time.perf_counter() - start
        own = watch.seconds.get("decompositions", 0.0) - before
        fits.append((out.basis.n_columns, out.basis.k, seconds, own))
        return out

    fitting.fit = timed_fit
    watch.on = False
    forward = _forward_alone(model, x, transforms, 32)
    fits.clear()
    watch.on = True
    report = median_time(
        lambda: layerwise_seis(model, x, transforms, batch_size=32, progress=False), 1
    )
    watch.on = False
    decompositions = watch.seconds.get("decompositions", 0.0)
    fitting.fit = real_fit
    floor = forward + watch.seconds.get("moment pass", 0.0) + decompositions
    rows = [
        ratio_row("resnet18 224px report", f"its T+1 forward passes, N={n}", report, forward, 4.0),
        dict(case="resnet18 224px report",
             what=f"its floor: forward + moment pass {watch.seconds.get('moment pass', 0):.1f} s "
                  f"+ its decompositions {decompositions:.1f} s",
             ours=report, base=floor, target="informational: what 4x leaves for the rest",
             ok=True),
    ]  # fmt: skip
    floors = {}
    rng = np.random.default_rng(0)
    for d, k, *_ in fits:
        if (d, k) not in floors:
            big = rng.standard_normal((d, d))
            small = rng.standard_normal((k, k))
            S, T = big @ big.T, small @ small.T
            floors[(d, k)] = _eigh_seconds(S) + 3 * _eigh_seconds(T)
    # the worst of the fits whose decompositions take 0.2 s or more (below that, a fit's
    # few milliseconds of Python around them decide the ratio)
    timed = [f for f in fits if floors[(f[0], f[1])] >= 0.2] or fits
    worst = max(timed, key=lambda f: f[2] / floors[(f[0], f[1])])
    for d, k, seconds, own in sorted(set(fits), key=lambda f: -f[0])[:3]:
        rows.append(ratio_row("resnet18 224px fit", f"its decompositions, d={d}, k={k}",
                              seconds, floors[(d, k)], 1.5,
                              note=f"its own eigh calls {own:.2f} s"))  # fmt: skip
    rows.append(ratio_row("resnet18 224px fit", f"worst of {len(timed)} fits (d={worst[0]})",
                          worst[2], floors[(worst[0], worst[1])], 1.5))  # fmt: skip
    for count in (64, n):
        out = subprocess.run(
            [sys.executable, __file__, "--rss-probe", f"resnet224:{count}:auto:rows"],
            capture_output=True, text=True, check=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"},
        )  # fmt: skip
        peak = int(out.stdout.split()[-1])
        what = f"peak RSS, one report of {count} images"
        rows.append(dict(case="resnet18 224px", what=what, ours=peak / 2**20,
                         target="<= 2,560 MB", ok=peak <= 2.5 * 2**30))  # fmt: skip
    return rows


def _no_cuda(case, target):
    """The one row of a CUDA case on a machine without CUDA."""
    return [
        dict(case=case, what="no CUDA device on this machine", ours=None, target=target, ok=None)
    ]


def _synchronise(device):
    """A function that waits for ``device`` to finish its queued work (nothing on the CPU)."""
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def case_resnet_device_path(scale, repeats):
    """The device path of the ResNet-18 report (torch accumulators, the Gram pass on kept
    tensors), forced on CPU tensors: what it costs on the host side where no GPU is, and
    the bytes of the statistics a GPU would copy to the host, against the activations."""
    import seis_sklearn.adapters.torch as adapter
    import torch

    adapter.statistics_on_device = lambda device: True  # this worker process only
    return _device_report("resnet18", scale, repeats, torch.device("cpu"))


def _device_report(network, scale, repeats, device, memory=None):
    """:func:`case_resnet_cuda` on ``device`` (also runnable on the CPU, to check the code).

    ``memory``: measure the peak device memory (default: on CUDA only; a dry run on
    the CPU passes True with ``torch.cuda``'s two memory functions replaced)."""

    import torch
    from seis_sklearn.adapters.torch import layerwise_seis

    import seis_sklearn._accumulate as accumulate
    import seis_sklearn._torch as torch_moments

    model, layers, options, transforms = _network(network)
    model.to(device)  # the model lives there: no report moves it
    n = max(64, int(512 * scale))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((2 * n, 3, 64, 64), dtype=np.float32)).to(device)
    sync = _synchronise(device)
    copied = {"statistics": 0, "activations": 0}
    add, result = accumulate.RowsFirst.add, torch_moments.TorchAccumulator.result

    def counting_add(self, tensors, indices=None):
        share = 1.0 if indices is None else len(indices) / tensors[0].shape[0]
        copied["activations"] += share * sum(t.element_size() * t.numel() for t in tensors)
        return add(self, tensors, indices)

    def counting_result(self):
        moments = result(self)  # what crosses: the joint product, the sums, the shift
        copied["statistics"] += sum(t.numel() * 8 for t in (self.joint, self.sums, self.shift))
        return moments

    def counting(function):  # the Gram pass over kept rows: its results cross
        def wrapper(*args, **kwargs):
            out = function(*args, **kwargs)
            parts = (out.gram, out.mean) if hasattr(out, "gram") else (out,)
            copied["statistics"] += sum(p.nbytes for p in parts)
            return out

        return wrapper

    accumulate.RowsFirst.add = counting_add  # every streamed batch, kept or accumulated
    torch_moments.TorchAccumulator.result = counting_result
    torch_moments.accumulate_gram = counting(torch_moments.accumulate_gram)
    torch_moments.gram_components = counting(torch_moments.gram_components)

    def report(count):
        out = layerwise_seis(
            model, x[:count], transforms, layers=layers, progress=False, batch_size=128,
            device=device, **options,
        )  # fmt: skip
        sync()
        return out

    def forward_alone():
        _forward_alone(model, x[:n], transforms, 128)
        sync()

    report(64)  # warm-up: kernels, cuDNN's choices, the allocator
    forward_alone()
    forward, total = interleaved_medians([forward_alone, lambda: report(n)], repeats)
    copied.update(statistics=0, activations=0)
    host_bytes = _device_to_host_bytes(lambda: report(n), device)
    counted = dict(copied)  # that one report's counts: the runs below add to the counters

    def peak(count):
        torch.cuda.reset_peak_memory_stats(device)
        report(count)
        return torch.cuda.max_memory_allocated(device)

    peaks = {}
    if device.type == "cuda" if memory is None else memory:  # as run, then moments only
        peaks["kept"] = peak(2 * n)
        with _as_many_images():
            peaks["moments"] = [peak(n), peak(2 * n)]
    label = f"{network} report N={n} {device.type}"
    bound = 1.3 if device.type == "cuda" else 1.5  # the GPU target; on CPU tensors the CPU one
    rows = [
        ratio_row(
            label,
            "report / the same forward passes alone (T + 1 per batch)",
            total,
            forward,
            bound,
        ),
    ]
    if device.type == "cuda":
        rows.append(
            dict(
                case=label,
                what=(
                    f"device->host bytes of one report (statistics "
                    f"{counted['statistics'] / MB:.1f} MB; activations "
                    f"{counted['activations'] / MB:.0f} MB)"
                ),
                ours=host_bytes / MB,
                unit=" MB",
                target="<= the statistics' bytes + 1 MB (no activation crosses)",
                ok=host_bytes <= counted["statistics"] + MB,
            )
        )
    else:  # nothing is copied between CPU tensors: what would cross, against the activations
        rows.append(
            dict(
                case=label,
                what=(
                    "statistics the host receives, against the activations "
                    f"({counted['activations'] / MB:.0f} MB)"
                ),
                ours=counted["statistics"] / MB,
                unit=" MB",
                target="< the activations' bytes",
                ok=counted["statistics"] < counted["activations"],
            )
        )
    if peaks:  # the host case's two rows (case_resnet), on the device
        one, two = peaks["moments"]
        rows.append(
            dict(
                case=label,
                what=f"peak device memory, moments only: 2N images vs N ({one / MB:.0f} MB)",
                ours=two / MB,
                unit=" MB",
                target="independent of N (within 10% + 32 MB)",
                ok=two <= 1.1 * one + 32 * MB,
            )
        )
        rows.append(
            dict(
                case=label,
                what="peak device memory, rows kept while smaller: 2N images",
                ours=peaks["kept"] / MB,
                unit=" MB",
                target="<= moments only at 2N + 32 MB",
                ok=peaks["kept"] <= two + 32 * MB,
            )
        )
    return rows


def case_algebra_cuda(scale, repeats):
    """The dense algebra of a layer on a CUDA device against numpy on the host, for
    the decision the issue leaves to measurement: float64 ``eigh`` and ``svd`` of the
    sizes a report decomposes (a k × k covariance, a Gram matrix, a pooled moment),
    the device's time including the copies both ways. Without CUDA: one row saying so."""
    import torch

    if not torch.cuda.is_available():
        return _no_cuda(
            "dense algebra on CUDA", "device time (copies included) vs numpy on the host"
        )
    return _algebra_rows(torch.device("cuda"), repeats)


def _algebra_rows(device, repeats):
    """:func:`case_algebra_cuda` on ``device`` (runnable on the CPU, to check the code)."""
    import torch

    sync = _synchronise(device)
    rng = np.random.default_rng(0)
    rows = []
    for n in (256, 820, 2048):
        X = rng.standard_normal((2 * n, n))
        S, K = X.T @ X / (2 * n), rng.standard_normal((n, n))

        def on_device(function, matrix):
            def run():
                out = function(torch.as_tensor(matrix, device=device))
                [o.cpu().numpy() for o in out]
                sync()

            return run

        pairs = (
            ("eigh", np.linalg.eigh, torch.linalg.eigh, S),
            ("svd", np.linalg.svd, torch.linalg.svd, K),
        )
        for name, host, torch_function, matrix in pairs:
            on_device(torch_function, matrix)()  # warm-up: the solver's workspace, cuSOLVER
            ours, base = interleaved_medians(
                [on_device(torch_function, matrix), lambda h=host, m=matrix: h(m)],
                max(repeats, 3),
            )
            rows.append(
                dict(
                    case=f"float64 {name} n={n:,}",
                    what=f"{device.type} (copies included) vs numpy on the host",
                    ours=ours,
                    base=base,
                    target="ratio < 1: the device is faster",
                    ok=None,
                )
            )
    return rows


def _device_to_host_bytes(fn, device):
    """Bytes the CUDA profiler saw copied device → host while ``fn`` ran (0 on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        fn()
        return 0
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh).get("traceEvents", [])
    return sum(
        int(e.get("args", {}).get("bytes", 0))
        for e in events
        if e.get("cat") == "gpu_memcpy" and "DtoH" in e.get("name", "")
    )


CASES = {
    "spatial": case_spatial,
    "cca": case_cca,
    "memmap": case_memmap,
    "wide": case_wide,
    "dask": case_dask,
    "dask-ooc": case_dask_ooc,
    "resnet": case_resnet,
    "resnet-spatial": case_resnet_spatial,
    "resnet224": case_resnet224,
    "vit": case_vit,
    "resnet-cuda": case_resnet_cuda,
    "resnet-device-path": case_resnet_device_path,
    "algebra-cuda": case_algebra_cuda,
}


# -- driver ------------------------------------------------------------------------------
def _worker(name, scale, repeats):
    rows = CASES[name](scale, repeats)
    print("RESULT " + json.dumps(rows), flush=True)


def _machine():
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"BLAS {blas.get('name', '?')} {blas.get('version', '')}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--worker", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--rss-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_probe:
        return _probe(args.rss_probe)
    if args.worker:
        return _worker(args.worker, args.scale, args.repeats)
    print(_machine() + f"; scale={args.scale}, medians of {args.repeats}")
    head = f"{'case':<30}{'measured against':<50}{'ours':>9}{'baseline':>10}{'ratio':>8}  target"
    print(head)
    print("-" * (len(head) + 30))
    failed = 0
    for name in args.case or list(CASES):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                name,
                "--scale",
                str(args.scale),
                "--repeats",
                str(args.repeats),
            ],
            capture_output=True,
            text=True,
        )
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            print(f"{name:<30}FAILED (exit {out.returncode}): {out.stderr.strip()[-300:]}")
            failed += 1
            continue
        for row in json.loads(lines[-1][len("RESULT ") :]):
            unit = row.get("unit", " MB" if "RSS" in row["what"] else " s")
            base = f"{row['base']:.2f} s" if "base" in row else ""
            ratio = f"{row['ours'] / row['base']:.3f}" if "base" in row else ""
            if row["ours"] is None:  # a case this machine cannot measure (no GPU)
                ours, mark = "-", "not measured"
            else:
                ours = f"{row['ours']:.2f}{unit}" if unit == " s" else f"{row['ours']:.0f}{unit}"
                mark = {None: "informational", True: "met", False: "NOT MET"}[row["ok"]]
            print(
                f"{row['case']:<30}{row['what']:<50}{ours:>9}{base:>10}{ratio:>8}"
                f"  {row['target']}: {mark}",
                flush=True,
            )
            if row.get("note"):
                print(f"{'':<30}  {row['note']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
