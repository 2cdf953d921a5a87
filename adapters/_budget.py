"""A report's budget, decided before the pass: each layer's memory and algebra.

At the resolution models are used at, a layer's cost is its matricization's width
``d``: the statistics hold ``3d²`` numbers per accumulator, and the fit
eigendecomposes a ``d × d`` moment and three ``k × k`` matrices (k up to ``d``). A
224×224 VGG's first maps have d = 50,176 positions: one ``d × d`` moment is 20 GB, its
decomposition hours. Nothing may run that blindly.

:func:`plan_budget` estimates every layer from its shape (the report's two-sample
probe) — memory of the statistics a pass holds and of the fit, seconds of the fit's
algebra at this machine's measured rate — and compares them with a budget (default:
half the memory available now, and 15 minutes of algebra per layer and transform).
A layer beyond it gets a remedy that keeps the scores' meaning, said in its row:

* ``"pool"`` (default): average pooling of its map over ``p × p`` blocks, ``p`` the
  smallest divisor of both sides that brings the layer within the budget — exact for
  quarter turns and flips (the blocks map onto blocks) and for shifts by multiples of
  ``p``; d falls by ``p²``;
* where no pooling helps (vectors, tokens, a map whose sides share no divisor) or with
  ``over_budget="skip"``: the layer is not scored, its row says why with the numbers;
* ``over_budget="error"``: the report stops before the pass, listing the layers.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import numpy as np

from seis_sklearn._matricize import matrix_shape

# An eigendecomposition of an n × n matrix costs about this many times n³ flops of a
# matrix product (seis_sklearn._fit.EIGH_COST: numpy eigh against GEMM, measured).
EIGH_COST = 10.0
# The default seconds of algebra one layer's fit may take before a remedy applies.
DEFAULT_SECONDS = 15 * 60
REMEDIES = ("pool", "skip", "error")


@dataclass(frozen=True)
class Cost:
    """What one layer of a report costs: bytes held, seconds of algebra, its width."""

    memory: int
    seconds: float
    d: int

    def describe(self):
        return f"d={self.d:,}: ~{_bytes(self.memory)} and ~{_seconds(self.seconds)} of algebra"


@dataclass(frozen=True)
class Budget:
    """Bytes and seconds a layer may take (:func:`check_budget`)."""

    memory: float
    seconds: float

    def admits(self, cost):
        return cost.memory <= self.memory and cost.seconds <= self.seconds

    def describe(self):
        return f"budget {_bytes(self.memory)}, {_seconds(self.seconds)}"


def _bytes(n):
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _seconds(s):
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


@functools.lru_cache(maxsize=1)
def flop_rate():
    """Floating-point operations per second of a float64 matrix product here (measured
    once per process on a 768 × 768 product, the best of three)."""
    a = np.random.default_rng(0).standard_normal((768, 768))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * 768**3 / max(best, 1e-9)


def available_memory():
    """Bytes of physical memory available now (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def check_budget(budget):
    """``budget`` as a :class:`Budget`: ``"auto"`` (half the memory available now, 15
    minutes of algebra per layer), None (no budget), or a dict with ``memory`` (bytes)
    and/or ``seconds``."""
    if budget is None:
        return None
    if isinstance(budget, Budget):
        return budget
    if budget == "auto":
        memory = available_memory()
        return Budget(memory / 2 if memory else float("inf"), DEFAULT_SECONDS)
    if isinstance(budget, dict) and set(budget) <= {"memory", "seconds"}:
        values = {k: float(v) for k, v in budget.items()}
        if any(not v > 0 for v in values.values()):
            raise ValueError(f"budget values must be positive; got {budget!r}")
        auto = check_budget("auto")
        return Budget(values.get("memory", auto.memory), values.get("seconds", auto.seconds))
    raise ValueError(
        "budget must be 'auto', None or a dict with 'memory' (bytes) and/or 'seconds'; "
        f"got {budget!r}"
    )


def layer_cost(shape, layout, mode, n_samples, transforms, itemsize=4, rate=None):
    """Memory and seconds of one layer (per-sample ``shape``, concrete ``layout`` and
    ``mode``) for ``n_samples`` samples (None: unknown, counted as a thousand) and
    ``transforms`` transforms sharing its pass.

    Memory: the statistics the pass holds for it (moments of both views, kept and held
    out, a float32 product buffer — or the rows while fewer) and, at its fit, its d × d
    moments, the pooled moment and the decomposition's workspace. Seconds: the fit's
    decompositions (the pooled ``d × d`` and three ``k × k``, k ≤ d) and products, at
    :func:`flop_rate`; or the Gram solver's, where it is the cheaper (d > 2m).
    """
    from seis_sklearn._fit import solver_costs

    rate = rate or flop_rate()
    rows, d = matrix_shape((1, *shape), layout, mode)
    n = n_samples if n_samples is not None else 1000
    m = n * rows
    k = max(1, min(d, m - rows))
    moments_flops, gram_flops = solver_costs(m, d, rank=2 * (m - rows))
    width = 2 * d
    if gram_flops < moments_flops:  # the rows are kept: O(m²) memory
        statistics = 2 * m * d * itemsize * 2
        fit = (2 * m) ** 2 * 8 * 3
        flops = gram_flops + EIGH_COST * 3 * k**3 + 12 * k**3
    else:  # kept and held: three d × d float64 sums each; a float32 product and
        # row buffers shared by every accumulator of the width
        statistics = 2 * 3 * d * d * 8
        fit = 8 * d * d * 8 + 8 * k * k * 8  # moments, pooled S, eigh; the CCA's k × k
        flops = moments_flops + EIGH_COST * 3 * k**3 + 12 * k**3 + 6 * d * d * k
    shared = width**2 * 4 + 2 * 4096 * width * 4 if itemsize <= 4 else 0
    rows_bytes = 2 * m * width * itemsize  # kept and held rows, while fewer than moments
    memory = min(transforms * statistics + shared, transforms * rows_bytes) + fit
    return Cost(int(memory), flops / rate, d)


def pool_factor(shape, layout, mode, fits):
    """The smallest integer pooling of the map (dividing both its sides) whose cost
    ``fits`` (a function of the pooled per-sample shape → bool), or None."""
    if layout not in ("NCHW", "NHWC") or mode == "channel":
        return None
    h, w = (shape[1], shape[2]) if layout == "NCHW" else (shape[0], shape[1])
    for p in range(2, min(h, w) + 1):
        if h % p or w % p:
            continue
        if fits(pooled_shape(shape, layout, p)):
            return p
    return None


def pooled_shape(shape, layout, p):
    """Per-sample shape after ``p × p`` average pooling of the map."""
    if layout == "NCHW":
        return (shape[0], shape[1] // p, shape[2] // p)
    return (shape[0] // p, shape[1] // p, shape[2])


def pool(array, layout, p):
    """``p × p`` average pooling of a batch's maps (numpy array or torch tensor)."""
    n = array.shape[0]
    if layout == "NCHW":
        c, h, w = array.shape[1:]
        blocks = array.reshape(n, c, h // p, p, w // p, p)
        return blocks.mean((3, 5)) if isinstance(array, np.ndarray) else blocks.mean(dim=(3, 5))
    h, w, c = array.shape[1:]
    blocks = array.reshape(n, h // p, p, w // p, p, c)
    return blocks.mean((2, 4)) if isinstance(array, np.ndarray) else blocks.mean(dim=(2, 4))


def plan_budget(shapes, readings, seis_params, n_samples, transforms, budget, over_budget):
    """Every layer's reading with the budget's remedy, and what to say before the pass.

    Parameters
    ----------
    shapes : dict
        Layer key → per-sample shape (as recorded).
    readings : dict
        Layer key → :class:`~seis_sklearn.adapters._layout.Reading`.
    seis_params : dict
        The report's SEIS parameters (``matricization`` may be ``"auto"``).
    n_samples : int or None
    transforms : int
        Transforms whose statistics a pass may hold at once.
    budget : "auto", None, dict or Budget
    over_budget : {"pool", "skip", "error"}

    Returns
    -------
    readings : dict
        With ``pool``/``remedy`` (pooled) or ``skip``/``remedy`` (not scored) set on the
        layers beyond the budget.
    notes : list of str
        One line per such layer, with the numbers.

    Raises
    ------
    ValueError
        ``over_budget="error"`` and a layer beyond the budget (all of them listed).
    """
    from dataclasses import replace

    from ._common import layer_params
    from ._layout import read_shape

    budget = check_budget(budget)
    if over_budget not in REMEDIES:
        raise ValueError(f"over_budget must be one of {', '.join(REMEDIES)}; got {over_budget!r}")
    if budget is None:
        return dict(readings), []
    rate = flop_rate()
    out, notes, refused = dict(readings), [], []
    for key, shape in shapes.items():
        reading = readings[key]

        def cost_of(per_sample, reading=reading):
            params, _ = layer_params(seis_params, (1, *per_sample), reading)
            mode = params.get("matricization", "spatial")
            return layer_cost(per_sample, reading.layout, mode, n_samples, transforms, rate=rate)

        read = read_shape(shape, reading)
        cost = cost_of(read)
        if budget.admits(cost):
            continue
        if over_budget == "error":
            refused.append(f"{key!r} ({cost.describe()})")
            continue
        mode = layer_params(seis_params, (1, *read), reading)[0].get("matricization", "spatial")
        p = None
        if over_budget == "pool":
            p = pool_factor(read, reading.layout, mode, lambda s: budget.admits(cost_of(s)))
        if p is not None:
            pooled = cost_of(pooled_shape(read, reading.layout, p))
            remedy = (
                f"pooled {p}×{p}: {cost.describe()} is over the {budget.describe()}; "
                f"pooled {pooled.describe()} (exact for quarter turns, flips and shifts by "
                f"multiples of {p})"
            )
            out[key] = replace(reading, pool=p, remedy=remedy)
        else:
            why = "no pooling of its map fits" if over_budget == "pool" else "over_budget='skip'"
            remedy = (
                f"not scored: {cost.describe()} is over the {budget.describe()} ({why}; "
                "choose its layers, max_components=, or a larger budget=)"
            )
            out[key] = replace(reading, skip=remedy, remedy=remedy)
        notes.append(f"layer {key!r}: {out[key].remedy}")
    if refused:
        raise ValueError(
            f"{len(refused)} layer(s) beyond the {budget.describe()}: {', '.join(refused)}; "
            "pass over_budget='pool' (average pooling, exact for quarter turns, flips and "
            "shifts by its multiples), choose layers, or a larger budget="
        )
    return out, notes
