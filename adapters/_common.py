"""What every adapter shares, whatever the framework: storing, streaming, reporting.

An adapter turns a model and its inputs into a *batch generator*: it yields first
the number of samples (or ``None`` when unknown), then, per batch,
``((start, stop), {view: {layer key: ndarray}})`` with the views ``"original"``
and, in pair mode, ``"transformed"`` (:func:`batch_views`; with several transformed
views a batch comes in parts, :func:`yields_in_parts`). The functions here consume it:
:func:`collect` into arrays or memory maps, :func:`stream` into held-out SEIS
statistics, :func:`layerwise_frame` into the report table. Nothing here imports a
framework.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import numpy as np

from seis_sklearn._files import safe_stem
from seis_sklearn._validation import first_line

from ._checkpoint import FitsStopped

VIEWS = ("original", "transformed")


TOKENS = ("auto", "all", "patch")


def check_tokens(tokens, n_prefix, model_prefix=None, *, required=False):
    """The prefix-token count of (N, L, D) activations to read layers with.

    ``tokens="patch"`` drops the leading tokens (class and register tokens) of each
    token layer, so that spatial mode sees only the patch grid a transform permutes;
    ``n_prefix=None`` takes ``model_prefix`` (what the model says, e.g. timm's
    ``num_prefix_tokens``), and where neither says, each layer's count is the one
    that leaves a grid of patches (:func:`~seis_sklearn.adapters._layout.read_layers`).
    ``tokens="auto"`` drops them where the model says how many there are (or
    ``n_prefix`` is given) and keeps every token where it does not.

    Returns
    -------
    int or None
        0 for ``"all"``; for ``"patch"`` and ``"auto"`` the count given or said by the
        model, or None (``"patch"``: found per layer; ``"auto"``: every token kept).
        ``required=True`` (saved pairs, which have no input grid) refuses None for
        ``"patch"``.
    """
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be 'auto', 'all' or 'patch'; got {tokens!r}")
    if tokens == "all":
        if n_prefix is not None:
            raise ValueError("n_prefix goes with tokens='patch' (or 'auto'), not 'all'")
        return 0
    n = n_prefix if n_prefix is not None else model_prefix
    if n is None and tokens == "auto":
        return None
    if n is None:
        if required:
            raise ValueError(
                "tokens='patch' needs n_prefix= (the number of class/register tokens before "
                "the patches): the activations do not say"
            )
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n_prefix must be an int >= 0; got {n!r}")
    return int(n)


def read_views(per_view, readings):
    """A batch's activations as each layer's
    :class:`~seis_sklearn.adapters._layout.Reading` says: its prefix tokens dropped, its
    map pooled (a budget's remedy). ``readings``: layer key → reading, or None."""
    if not readings or not any(r.n_prefix or r.pool > 1 for r in readings.values()):
        return per_view
    return {
        view: {k: read_as(a, readings.get(k)) for k, a in recorded.items()}
        for view, recorded in per_view.items()
    }


def read_as(array, reading):
    """One layer's activations as its reading says (prefix tokens, pooling)."""
    if reading is None:
        return array
    if reading.n_prefix and array.ndim == 3:
        array = array[:, reading.n_prefix :]
    if reading.pool > 1 and array.ndim == 4:
        from ._budget import pool

        array = pool(array, reading.layout, reading.pool)
    return array


def layer_params(seis_params, shape, reading=None):
    """The SEIS parameters of one layer: its layout (from its ``reading``, when the
    report read the layer) and ``matricization="auto"`` resolved for its shape.

    Returns
    -------
    params : dict
    choice : str
        How the matricization was chosen (``"given"`` or the auto rule's note).
    """
    from seis_sklearn._matricize import auto_matricization

    if reading is not None:
        seis_params = {**seis_params, "layout": reading.layout}
    mode = seis_params.get("matricization", "spatial")
    if mode != "auto":
        return dict(seis_params), "given"
    mode, note = auto_matricization(tuple(shape), seis_params.get("layout", "auto"))
    return {**seis_params, "matricization": mode}, note


def check_stream_args(held_out, transform):
    """The checks of held-out streaming, before any model is run."""
    real = isinstance(held_out, (float, np.floating)) and not isinstance(held_out, bool)
    if not (real and 0.0 < float(held_out) <= 0.5):
        raise ValueError(f"held_out must be a float in (0, 0.5]; got {held_out!r}")
    _check_transform(transform)


def _check_transform(transform):
    if transform is None or not callable(transform):
        raise TypeError("transform must be callable (a batch of inputs → transformed batch)")


# samples read at once by check_finite_inputs: a memory map is scanned, never loaded whole
_FINITE_CHUNK_BYTES = 64 * 2**20


def check_finite_inputs(inputs, name="inputs"):
    """Refuse inputs that hold NaN or infinite values, before any model runs.

    A non-finite input gives non-finite activations, and one such sample makes a
    layer's statistics — and every score of the report — NaN. ``inputs`` is a numpy
    array (a memory map is scanned in chunks of samples, never loaded whole), a torch
    tensor, or a dict of them (the graph inputs of an ONNX model); anything else (an
    iterable of batches) is checked batch by batch as it is read
    (:func:`check_finite_batch`). Integer and boolean inputs are finite.

    Parameters
    ----------
    inputs : ndarray, torch.Tensor, dict or iterable
    name : str, default="inputs"
        The argument to name in the error (the command line passes ``--inputs FILE``).

    Raises
    ------
    ValueError
        With the number of non-finite values (NaN and infinite), of the samples that
        hold them and the first such sample.
    """
    if isinstance(inputs, dict):
        for key, value in inputs.items():
            check_finite_inputs(value, f"{name}[{key!r}]")
        return
    if not (isinstance(inputs, np.ndarray) or _is_tensor(inputs)):
        return
    counts = _non_finite(inputs)
    if counts is not None:
        raise ValueError(f"{name}: {_non_finite_text(counts, 0, len(inputs))}")


def check_finite_batch(batch, index, start, name="inputs"):
    """Refuse a batch of inputs read from an iterable that holds NaN or infinite values.

    Parameters
    ----------
    batch : ndarray or torch.Tensor
    index : int
        The batch's position among the batches read (0 for the first).
    start : int
        The position of its first sample among all samples read.
    name : str, default="inputs"

    Raises
    ------
    ValueError
        Naming ``name``, the batch and the samples, before the batch runs.
    """
    counts = _non_finite(batch)
    if counts is not None:
        where = f"batch {index} (samples {start}–{start + len(batch) - 1})"
        raise ValueError(
            f"{name}: {where} {_non_finite_text(counts, start, len(batch), of='its')}"
        )


def _is_tensor(value):
    return type(value).__module__.startswith("torch") and hasattr(value, "isfinite")


def _non_finite(inputs):
    """(NaN count, infinite count, samples holding them, first such sample) or None."""
    dtype = str(inputs.dtype)
    if not any(kind in dtype for kind in ("float", "complex")) or not inputs.ndim:
        return None  # integer, boolean (and object: refused elsewhere) values are finite
    if not len(inputs):
        return None
    per_sample = max(1, int(np.prod(inputs.shape[1:])) * inputs.dtype.itemsize)
    step = max(1, _FINITE_CHUNK_BYTES // per_sample)
    n_nan = n_inf = n_samples = 0
    first = None
    for start in range(0, len(inputs), step):
        chunk = inputs[start : start + step]
        if _is_tensor(chunk):
            nan, finite = chunk.isnan(), chunk.isfinite()
            bad = (~finite).reshape(len(chunk), -1).any(1).cpu().numpy()
            n_bad, nan = int((~finite).sum()), int(nan.sum())
        else:
            chunk = np.asarray(chunk)
            finite = np.isfinite(chunk)
            if finite.all():
                continue
            bad = ~finite.reshape(len(chunk), -1).all(1)
            n_bad, nan = int(finite.size - finite.sum()), int(np.isnan(chunk).sum())
        if n_bad:
            n_nan, n_inf = n_nan + nan, n_inf + n_bad - nan
            n_samples += int(bad.sum())
            if first is None:
                first = start + int(np.flatnonzero(bad)[0])
    return None if n_nan + n_inf == 0 else (n_nan, n_inf, n_samples, first)


def _non_finite_text(counts, offset, n, of="the"):
    n_nan, n_inf, n_samples, first = counts
    return (
        f"holds {n_nan + n_inf:,} non-finite value(s) ({n_nan:,} NaN, {n_inf:,} infinite) in "
        f"{n_samples:,} of {of} {n:,} samples (the first: sample {offset + first}), which would "
        "make every layer's statistics and scores NaN: remove or repair those samples"
    )


def batch_views(transform):
    """The views a batch generator computes: view key → the transform of the inputs
    that gives it (None: the inputs as they are).

    ``transform`` is None (the original view only), a callable (``"original"`` and
    ``"transformed"``: pair mode) or such a dict already (several transforms in one
    pass, or one view alone).
    """
    if transform is None:
        return {"original": None}
    if isinstance(transform, dict):
        for view, function in transform.items():
            if function is not None and not callable(function):
                raise TypeError(f"the transform of view {view!r} is not callable")
        return dict(transform)
    _check_transform(transform)
    return {"original": None, "transformed": transform}


def yields_in_parts(views):
    """Whether a batch generator yields each batch in parts: with the untransformed
    view and more than one transformed view, each transformed view is yielded with
    the original as soon as it is computed (the same rows again), so that a batch
    never holds more than two views' activations at once."""
    return "original" in views and views["original"] is None and len(views) > 2


def batch_items(rows, views, record):
    """What a batch generator yields for one batch: its views, whole or in parts
    (:func:`yields_in_parts`).

    Parameters
    ----------
    rows : (int, int)
        The batch's samples, ``(start, stop)``.
    views : dict
        :func:`batch_views`, in the order the views are computed.
    record : callable
        ``record(function)`` runs the model on the batch transformed by
        ``function`` (None: as it is) and returns layer key → activations.
    """
    parts = yields_in_parts(views)
    per_view = {}
    for view, function in views.items():
        if parts and function is not None:  # this view with the original, at once
            yield rows, {"original": per_view["original"], view: record(function)}
        else:
            per_view[view] = record(function)
    if not parts:
        yield rows, per_view


def describe(transform):
    """A readable name of a transform callable (``rot90(k=1)``), or None."""
    if isinstance(transform, functools.partial):
        args = [repr(a) for a in transform.args]
        args += [f"{k}={v!r}" for k, v in transform.keywords.items()]
        inner = describe(transform.func)
        return f"{inner}({', '.join(args)})" if inner else None
    name = getattr(transform, "__name__", None)
    return None if name in (None, "<lambda>") else name


def progress_bar(total, enabled, desc="activations", unit="sample"):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the adapter extras
        return None
    return tqdm(total=total, unit=unit, desc=desc, leave=False)


def collect(batches, *, out, dtype, paired, module_of, transform_name=None, layouts=None):
    """Gather a batch generator's activations into arrays, or memory maps in ``out``.

    Memory maps are written under temporary names and renamed when the whole run
    has finished (deleted after an error); in pair mode ``out`` becomes a
    saved-pairs folder with its manifest (:mod:`seis_sklearn.io`), which records the
    layout of each layer ``layouts`` (layer key → per-sample shape → layout or None)
    gives.

    Returns
    -------
    dict
        Layer key → array, or → ``(original, transformed)`` in pair mode.
    """
    n_total = next(batches)
    if out is not None and n_total is None:
        batches.close()
        raise ValueError(
            "out= needs the number of samples up front: pass a tensor, an array "
            "or a DataLoader over a sized dataset"
        )
    storage, pieces, finished, stop = {}, {}, False, 0
    try:
        with contextlib.closing(batches):
            for (start, stop), per_view in batches:
                for view, recorded in per_view.items():
                    for key, array in recorded.items():
                        _store(
                            storage,
                            pieces,
                            key,
                            view,
                            array.astype(dtype, copy=False),
                            (start, stop),
                            n_total,
                            out,
                            paired=paired,
                        )
        finished = True
    finally:
        _finish_files(storage, keep=finished)
    if out is not None and paired and storage:
        shapes = {k: tuple(a.shape[1:]) for (k, view), a in storage.items() if view == VIEWS[0]}
        found = layouts(shapes) if layouts is not None else None
        _write_manifest(out, storage, module_of, transform_name, found)
    if not storage and not pieces:
        raise ValueError("inputs gave no batches")
    if pieces:  # unknown length: concatenate what was collected
        storage = {k: np.concatenate(v) for k, v in pieces.items()}
    if n_total is not None and stop != n_total:
        raise ValueError(f"inputs gave {stop} samples, expected {n_total}")
    keys = list(dict.fromkeys(k for k, _ in storage))
    if not paired:  # one view: the original, or the transformed alone
        return {k: array for (k, _), array in storage.items()}
    return {k: (storage[(k, "original")], storage[(k, "transformed")]) for k in keys}


class ChannelDeviation:
    """The channelwise G-EED term of one transform, accumulated batch by batch.

    ``−mean cos([f(gx)]_i, [g·f(x)]_i)`` over samples and channels, with ``g``
    acting on feature maps by ``action`` (the transform itself, applied to the
    activations): −1 for an exactly equivariant layer. Layers the action cannot
    be applied to (no spatial axes, or a changed shape) get NaN.
    """

    def __init__(self, action, layout="auto", readings=None):
        self.action, self.layout, self.readings = action, layout, readings or {}
        self.sums, self.counts, self.failed = {}, {}, set()

    def add(self, per_view):
        from seis_sklearn._matricize import resolve_layout
        from seis_sklearn.metrics import _channel_cosines, _channels_last_flat

        for key, fx in per_view["original"].items():
            if key in self.failed:
                continue
            try:
                if fx.ndim < 3:
                    raise ValueError("no spatial axes")
                moved = np.asarray(self.action(fx))
                if moved.shape != fx.shape:
                    raise ValueError("the action changed the shape")
            except Exception:  # noqa: BLE001 - any failure: this layer has no value
                self.failed.add(key)
                continue
            reading = self.readings.get(key)
            layout = reading.layout if reading else resolve_layout(self.layout, fx.ndim)
            fgx = per_view["transformed"][key]
            cos = _channel_cosines(
                _channels_last_flat(fgx, layout), _channels_last_flat(moved, layout)
            )
            self.sums[key] = self.sums.get(key, 0.0) + float(cos.sum())
            self.counts[key] = self.counts.get(key, 0) + cos.size

    def values(self):
        keys = set(self.sums) | self.failed
        return {k: (np.nan if k in self.failed else -self.sums[k] / self.counts[k]) for k in keys}


#: The report's CKA columns: the standard linear CKA of each layer's flattened
#: activations (:func:`seis_sklearn.metrics.linear_cka`), biased and debiased.
CKA_COLUMNS = ("cka", "cka_debiased")
#: Columns not computed from the layers' SEIS moments.
NOT_FROM_MOMENTS = {"channel_eed", *CKA_COLUMNS}


class PassSums:
    """What a report's metrics need beyond the moments, summed batch by batch: the
    channelwise G-EED term (``eed``, a :class:`ChannelDeviation`) and, for the CKA
    columns (``cka``: their names), each layer's
    :class:`~seis_sklearn.metrics.MinibatchCKA` of its flattened activations — or,
    for stored activations, the exact values over all samples (``whole``)."""

    def __init__(self, eed=None, cka=()):
        self.eed, self.cka_names = eed, tuple(cka)
        self.cka = {} if self.cka_names else None
        self.whole = {}

    def add(self, per_view, plans, *, whole=False):
        """A batch's ``{"original": …, "transformed": …}`` (host arrays); ``plans``: layer
        key → its plan (``layout``; failed ones skipped). ``whole``: the arrays are all
        the samples of their layers (stored activations), whose CKA columns are then
        :func:`~seis_sklearn.metrics.linear_cka` of the flattened activations, exact."""
        from seis_sklearn.metrics import MinibatchCKA, linear_cka

        if self.eed is not None:
            self.eed.add(per_view)
        if self.cka is None:
            return
        for key, original in per_view["original"].items():
            plan = plans.get(key)
            if plan is None or plan.get("failed"):
                continue
            transformed = per_view["transformed"][key]
            if not whole:
                self.cka.setdefault(key, MinibatchCKA()).add(original, transformed)
                continue
            for name in self.cka_names:
                try:
                    value = linear_cka(original, transformed, layout=plan["layout"],
                                       debiased=name == "cka_debiased")  # fmt: skip
                except ValueError:  # no variance: undefined
                    value = np.nan
                self.whole.setdefault(name, {})[key] = value

    def values(self, name, moments=None):
        """Layer key → the value of metric ``name`` (``"channel_eed"``, ``"cka"`` or
        ``"cka_debiased"``; NaN where it is undefined)."""
        if name == "channel_eed":
            return self.eed.values() if self.eed is not None else {}
        if name in self.whole:
            return self.whole[name]
        debiased = name == "cka_debiased"
        out, skipped = {}, 0
        for key, sums in (self.cka or {}).items():
            skipped = max(skipped, int(sums.skipped[int(debiased)]))
            try:
                out[key] = sums.value(debiased=debiased)
            except ValueError:  # no variance, or no batch large enough
                out[key] = np.nan
        if skipped:
            import warnings

            warnings.warn(
                f"{name}: {skipped} samples (in batches smaller than "
                f"{4 if debiased else 2}) were not used by the minibatch estimator",
                UserWarning, stacklevel=3,
            )  # fmt: skip
        return out


def stream(batches, held_out, seis_params, *, dtype=None, deviation=None, readings=None):
    """Held-out SEIS of every layer of a pair-mode batch generator, never storing it.

    Every ``round(1 / held_out)``-th sample (by index) is held out. Each batch's
    kept and held-out samples go into two accumulators per layer
    (:mod:`seis_sklearn._accumulate`: numpy arrays on the host, torch tensors on
    their device); the basis and the CCA are computed once, from the kept
    samples' moments, and the held-out moments are scored under that fit. A layer
    whose rows take less memory than its moments keeps the rows instead
    (:class:`~seis_sklearn._accumulate.RowsFirst`) and is fitted on them like
    stored activations (the Gram solver where it is cheaper); its moments for
    other metrics are then computed only when read.
    ``matricization="auto"`` is resolved per layer (:func:`layer_params`); a layer
    of ``readings`` (layer key → :class:`~seis_sklearn.adapters._layout.Reading`) is
    read in its layout and loses its prefix tokens; ``dtype`` (optional) converts
    each batch first.

    Returns
    -------
    (dict, dict, dict, dict)
        Layer key → held-out :class:`~seis_sklearn.SEISResult`, → per-sample
        activation shape, → the moments of all samples (for other metrics), and
        → how its matricization was chosen.
    """
    deviations = {"transformed": deviation} if deviation is not None else None
    return stream_views(
        batches, ("transformed",), held_out, seis_params, dtype=dtype,
        deviations=deviations, readings=readings,
    )["transformed"]  # fmt: skip


def stream_views(
    batches, views, held_out, seis_params, *, dtype=None, deviations=None, readings=None,
    checkpoint=None, offset=0, progress=False, keep_moments=True,
):  # fmt: skip
    """:func:`stream` of several transforms in one pass over the batches.

    Each batch holds the ``"original"`` view and one transformed view per entry
    of ``views`` (or comes in parts, each with the original and some of them:
    :func:`yields_in_parts`); each transformed view is paired with the original
    and streamed into accumulators of its own, so the original forward pass of a
    batch serves every transform (T + 1 forward passes instead of 2T) while every
    transform's statistics are held at once.

    Parameters
    ----------
    batches : generator
        A batch generator (see the module's docstring) with these views.
    views : sequence
        The keys of the transformed views.
    held_out, seis_params, dtype, readings
        As in :func:`stream`.
    deviations : dict, optional
        View key → :class:`PassSums` (or None).
    checkpoint : Checkpoint, optional
        Between batches, a stop asked for saves the statistics there and raises
        :class:`KeyboardInterrupt` (:mod:`seis_sklearn.adapters._checkpoint`); with
        ``offset`` > 0 the pass resumes from what it saved. After the pass, a stop
        asked for raises :class:`~seis_sklearn.adapters._checkpoint.FitsStopped` before
        the next layer's fit (the caller saves the checkpoint with the rows of the
        layers fitted); a view whose layers were all fitted before such a stop has no
        layers left to fit (empty results).
    offset : int, default=0
        Index of the batches' first sample in the inputs (the samples before it were
        streamed before a stop): it decides which samples are held out.
    progress : bool, default=False
        A progress bar over the layers' fits after the pass (their algebra).
    keep_moments : bool, default=True
        Keep every layer's statistics for other metrics (the moments returned);
        False lets each go after its fit.

    Returns
    -------
    dict
        View key → what :func:`stream` returns for that transform.
    """
    stored_only = sorted(set(seis_params) & STORED_ONLY)
    if stored_only:
        raise ValueError(
            f"{stored_only[0]} refits on stored activations: pass held_out=None "
            "(in-sample scores of stored activations) to use it"
        )
    deviations = {v: d for v, d in (deviations or {}).items() if d is not None}
    every = int(round(1.0 / held_out))
    state = {view: ({}, {}, {}) for view in views}  # layer plans, kept, held
    if checkpoint is not None and offset:
        checkpoint.seed(views, state, deviations)
    next(batches)
    done = offset  # samples of whole batches streamed
    with contextlib.closing(batches):
        for rows, per_view in batches:
            if rows[0] + offset >= done:  # a new batch: the one before it is whole
                if checkpoint is not None and checkpoint.stop_requested():
                    checkpoint.save(done, views, state, deviations)
                    raise KeyboardInterrupt
                done = rows[1] + offset
            per_view = _as_dtype(read_views(per_view, readings), dtype)
            phase = (np.arange(*rows) + offset) % every
            host = _on_host(per_view) if deviations else None
            for view in (v for v in views if v in per_view):  # the batch, or a part of it
                pair = {"original": per_view["original"], "transformed": per_view[view]}
                _stream_batch(pair, phase, *state[view], seis_params, readings)
                if view in deviations:
                    deviations[view].add(
                        {"original": host["original"], "transformed": host[view]}, state[view][0]
                    )
            del per_view, pair, host  # the next batch is computed while these names hold one
    bar = progress_bar(
        sum(len(state[v][0]) for v in views), progress, desc="layers fitted", unit="layer"
    )
    stop = checkpoint.stop_requested if checkpoint is not None else None
    fitted = {}
    try:
        for view in views:
            if not state[view][0] and checkpoint is not None and checkpoint.finished_rows(view):
                fitted[view] = ({}, {}, LazyMoments(), {})  # every layer fitted before a stop
                continue
            fitted[view] = _fit_streamed(*state[view], held_out, bar, keep_moments, stop)
        return fitted
    except FitsStopped as stopped:  # between two layers' fits: what is done, and the rest
        raise FitsStopped({**fitted, view: stopped.done}, state, done) from None
    finally:
        if bar is not None:
            bar.close()


def pairs_by_transform(transforms, run):
    """(name, layer key → (original, transformed)) per transform, held in memory.

    ``run(views)`` is the adapter's batch generator over the inputs for the views
    of :func:`batch_views`. One transform: both views in one pass. Several: the
    original activations once and each transform's beside them — T + 1 forward
    passes instead of 2T, never more than two views held at once — provided every
    pass reads the same input batches: where the adapter can tell (``run(views,
    digests=list)`` fills the list with a digest per batch) and a pass read others (a
    ``DataLoader`` with ``shuffle=True`` reorders its samples on every pass), that
    transform is run again with the original view computed from the same batches.
    """

    def gather(views, digests=None):
        batches = run(views) if digests is None else run(views, digests=digests)
        return collect(batches, out=None, dtype=np.float32, paired=len(views) == 2,
                       module_of=None)  # fmt: skip

    if len(transforms) == 1:
        ((name, transform),) = transforms.items()
        yield name, gather({"original": None, "transformed": transform})
        return
    first = []
    originals = gather({"original": None}, first)
    for name, transform in transforms.items():
        seen = []
        transformed = gather({"transformed": transform}, seen)
        if seen != first:  # other batches: pair each sample with its own original
            del transformed
            yield name, gather({"original": None, "transformed": transform})
            continue
        if list(transformed) != list(originals):
            raise ValueError(
                f"transform {name!r}: the model recorded layers {list(transformed)} for the "
                f"transformed inputs and {list(originals)} for the original ones"
            )
        yield name, {k: (originals[k], transformed[k]) for k in originals}


def report_rows(
    transforms, run, *, held_out, per_pass, n_samples, layer_shapes, module_of, action,
    seis_params, metrics, readings, expected=(), on_rows=None, checkpoint=None,
    progress=False,
):  # fmt: skip
    """The rows of a layerwise report (:func:`layerwise_rows`), every transform.

    Streamed (``held_out``): the transforms in groups of :func:`transform_groups`,
    each group in one pass (:func:`stream_views`). Stored (``held_out=None``):
    :func:`pairs_by_transform` and :func:`in_sample`.

    Parameters
    ----------
    transforms : dict of str → callable
    run : callable
        ``run(views, streamed=False)``: the adapter's batch generator over the inputs
        for the views of :func:`batch_views`; ``streamed``: the activations may stay
        where the model computed them.
    held_out : float or None
    per_pass : "auto" or int
        Checked (:func:`check_transforms_per_pass`).
    n_samples : int or None
    layer_shapes : callable
        As in :func:`transform_groups`.
    module_of : callable
        Layer key → its module's name for the ``module`` column.
    action : callable
        A transform → its action on activations (numpy arrays), for ``channel_eed``.
    seis_params, metrics
        As the adapters' ``layerwise_seis`` resolved them.
    readings : dict
        Layer key → :class:`~seis_sklearn.adapters._layout.Reading`, decided before
        the pass.
    expected : sequence of str
        The layers asked for: one that recorded nothing gets a row saying so
        (:func:`never_ran_rows`).
    on_rows : callable, optional
        Called with each transform's rows (stored) or each pass's (streamed) as
        soon as they are computed (rows of layers that never ran included).
    checkpoint : Checkpoint, optional
        Streamed passes save their statistics there on a stop and resume from
        them (:mod:`seis_sklearn.adapters._checkpoint`); ``run`` then takes
        ``skip=`` (samples to leave out at the start of the inputs).

    Returns
    -------
    list of dict
    """
    rows = []
    emit = on_rows or (lambda _rows: None)
    if held_out is None:
        for name, pairs in pairs_by_transform(transforms, run):
            deviation = deviation_for(metrics, action(transforms[name]), seis_params, readings)
            results, shapes, moments, choices = in_sample(
                pairs, seis_params, metrics, deviation, readings=readings, progress=progress
            )
            done = layerwise_rows(
                results, shapes, module_of, name, moments, metrics, deviation, choices, readings
            )
            done += never_ran_rows(expected, done, module_of)
            emit(done)
            rows += done
        return rows
    for transform in transforms.values():
        check_stream_args(held_out, transform)
    groups = transform_groups(transforms, per_pass, layer_shapes, n_samples, seis_params, readings)
    for group in groups:
        views = {("transformed", name): transforms[name] for name in group}
        deviations = {
            view: deviation_for(metrics, action(function), seis_params, readings)
            for view, function in views.items()
        }
        if checkpoint is not None and checkpoint.stop_requested():
            raise KeyboardInterrupt  # asked while the last pass's rows were written
        start = checkpoint.start(list(views)) if checkpoint is not None else 0
        if start and checkpoint.pass_finished(list(views)):
            batches = _no_batches(n_samples)  # stopped after the pass: nothing to stream
        elif start:
            batches = run({"original": None, **views}, True, skip=start)
        else:
            batches = run({"original": None, **views}, True)
        try:
            streamed = stream_views(
                batches, list(views), held_out, seis_params, deviations=deviations,
                readings=readings, checkpoint=checkpoint, offset=start, progress=progress,
                keep_moments=bool(set(metrics) - NOT_FROM_MOMENTS),
            )  # fmt: skip
        except FitsStopped as stopped:  # keep the pass: the rows fitted, the others' statistics
            fitted = _pass_rows(stopped.done, checkpoint if start else None, module_of,
                                metrics, deviations, readings)  # fmt: skip
            checkpoint.save(stopped.position, list(views), stopped.state, deviations, fitted)
            raise
        done = _pass_rows(streamed, checkpoint if start else None, module_of, metrics,
                          deviations, readings)  # fmt: skip
        if checkpoint is not None:
            checkpoint.clear()
        done = [row for view_rows in done.values() for row in view_rows]
        done += never_ran_rows(expected, done, module_of)
        emit(done)
        rows += done
    return rows


def _pass_rows(streamed, resumed, module_of, metrics, deviations, readings):
    """View key → the rows of a pass's views (:func:`layerwise_rows`), after the rows
    of the layers fitted before a stop that the checkpoint ``resumed`` from kept."""
    out = {}
    for view, (results, shapes, moments, choices) in streamed.items():
        before = resumed.finished_rows(view) if resumed is not None else []
        new = layerwise_rows(
            results, shapes, module_of, view[1], moments, metrics, deviations[view], choices,
            readings,
        )  # fmt: skip
        for row in new:  # their depths follow the rows fitted before the stop
            row["depth"] += len(before)
        out[view] = before + new
    return out


def _no_batches(n_samples):
    """A batch generator with no batches (a resumed pass that had finished)."""
    yield n_samples


def probe_readings(
    probe, input_shape, change, *, layout, tokens, model_prefix, prefix_given=False
):  # fmt: skip
    """Every layer's activation shape and :class:`~seis_sklearn.adapters._layout.Reading`,
    from forward passes of two samples, before the report's pass.

    Parameters
    ----------
    probe : callable
        ``probe(views)`` → ``{view: {layer key: array}}`` of the two samples for the
        views of :func:`batch_views` (``None``: the original only); None when the
        inputs are empty.
    input_shape : tuple of int or None
        Shape of the two-sample input batch.
    change : callable
        A batch → the batch with its lower-right quadrant replaced (the layout probe,
        run only where a layer's layout is ambiguous).
    layout, tokens, model_prefix, prefix_given
        As :func:`~seis_sklearn.adapters._layout.read_layers` takes them.

    Returns
    -------
    shapes : dict
        Layer key → (per-sample shape, itemsize).
    readings : dict
        Layer key → :class:`~seis_sklearn.adapters._layout.Reading`.
    """
    from ._layout import input_grid, read_layers

    recorded = probe(None) if input_shape is not None else None
    if recorded is None:
        return {}, {}
    shapes = {k: (tuple(a.shape[1:]), a.dtype.itemsize) for k, a in recorded["original"].items()}

    def changed():
        both = probe({"original": None, "transformed": change})
        return {k: (_host(a), _host(both["transformed"][k])) for k, a in both["original"].items()}

    readings = read_layers(
        {k: shape for k, (shape, _) in shapes.items()}, input_grid(input_shape),
        layout=layout, tokens=tokens, model_prefix=model_prefix, probe=changed,
        prefix_given=prefix_given,
    )  # fmt: skip
    return shapes, readings


def _host(a):
    return a if isinstance(a, np.ndarray) else a.cpu().numpy()


def within_budget(shapes, readings, seis_params, n_samples, transforms, budget, over_budget):
    """The readings with a budget's remedies (:func:`~seis_sklearn.adapters._budget.
    plan_budget`), each remedy said in a warning before the pass."""
    import warnings

    from ._budget import plan_budget

    shapes = {k: shape for k, (shape, _) in shapes.items()}
    readings, notes = plan_budget(
        shapes, readings, seis_params, n_samples, transforms, budget, over_budget
    )
    for note in notes:
        warnings.warn(note, BudgetWarning, stacklevel=3)
    return readings


class BudgetWarning(UserWarning):
    """A layer of a report is beyond its budget: pooled, or not scored (the row says)."""


def never_ran_rows(expected, rows, module_of):
    """Rows for requested layers that recorded nothing (their ``forward`` never ran):
    NaN scores and the reason, after the layers that ran, for every transform."""
    seen = {row["layer"].split("#")[0] for row in rows}
    missing = [name for name in expected if name not in seen]
    if not missing:
        return []
    from seis_sklearn.report import result_row

    out = []
    for transform in dict.fromkeys(row["transform"] for row in rows):
        depth = 1 + max((r["depth"] for r in rows if r["transform"] == transform), default=-1)
        for offset, name in enumerate(missing):
            result = unscored(name, "its forward never ran (no output recorded)", "",
                              {}, rows[0]["evaluation"] if rows else "")  # fmt: skip
            out.append(result_row(
                result, layer=name, depth=depth + offset, module=module_of(name), shape=(),
                transform=transform, layout_choice="",
            ))  # fmt: skip
    return out


def first_batch_shapes(batches):
    """Layer key → (per-sample shape, itemsize) of the original view of a batch
    generator's first batch (the generator is closed after it)."""
    next(batches)
    with contextlib.closing(batches):
        _, per_view = next(batches)
    return {k: (tuple(a.shape[1:]), a.dtype.itemsize) for k, a in per_view["original"].items()}


# transforms_per_pass="auto": as many transforms share a pass over the inputs as keep
# the statistics held at once under this many bytes (at least one transform).
AUTO_PASS_BYTES = 2 * 2**30


def check_transforms_per_pass(value):
    """``"auto"`` or an int >= 1, else a ValueError naming the argument."""
    if value == "auto" or (
        isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1
    ):
        return value
    raise ValueError(f"transforms_per_pass must be 'auto' or an int >= 1; got {value!r}")


def transform_groups(names, per_pass, layer_shapes, n_samples, seis_params, readings=None):
    """The transforms of a streamed report, in groups that each share one pass.

    Parameters
    ----------
    names : sequence
        The transforms, in the report's order.
    per_pass : "auto" or int
        Transforms per pass; ``"auto"``: as many as keep the statistics held at
        once (:func:`statistics_bytes` of every layer, per transform) within
        ``AUTO_PASS_BYTES``, at least one.
    layer_shapes : callable
        Returns layer key → (per-sample shape, itemsize) of the activations; called
        only for ``"auto"`` with several transforms.
    n_samples : int or None
        Samples of the inputs, when known.
    seis_params : dict
        The SEIS parameters (``matricization`` may be ``"auto"``).
    readings : dict, optional
        Layer key → :class:`~seis_sklearn.adapters._layout.Reading`.

    Returns
    -------
    list of list
    """
    names = list(names)
    if per_pass == "auto":
        per_pass = 1
        if len(names) > 1:
            each = sum(
                statistics_bytes(shape, itemsize, n_samples, seis_params, (readings or {}).get(k))
                for k, (shape, itemsize) in layer_shapes().items()
            )
            per_pass = max(1, AUTO_PASS_BYTES // max(each, 1))
    return [names[i : i + per_pass] for i in range(0, len(names), per_pass)]


def statistics_bytes(shape, itemsize, n_samples, seis_params, reading=None):
    """Bytes that one transform's streamed statistics of a layer settle at, at most.

    The kept and the held-out samples' accumulators
    (:class:`~seis_sklearn._accumulate.RowsFirst`) together: the rows of both views
    when ``n_samples`` is known and they take no more than the moments would;
    else, for each accumulator, a moment accumulator — its three d × d float64 sums
    (``Z_0ᵀZ_0``, ``Z_1ᵀZ_1``, ``Z_1ᵀZ_0``), the ``(2d)²`` float32 product for inputs
    of 4 bytes or less, its buffer of centred rows (4,096 rows of float32, or a
    chunk of float64) and the per-feature sums and shifts. The product and the rows
    of chunks multiplied at once are shared by every accumulator of a width
    (:class:`~seis_sklearn._moments.MomentAccumulator`): counted here for each, the
    bound holds for one layer alone.

    Parameters
    ----------
    shape : tuple of int
        Per-sample shape of the layer's activations (before its prefix tokens are
        dropped).
    itemsize : int
        Bytes per value of the activations as streamed.
    n_samples : int or None
    seis_params : dict
        ``matricization`` (``"auto"`` resolved here) and ``layout``.
    reading : Reading, optional
        The layer's layout and prefix tokens.

    Returns
    -------
    int
    """
    from seis_sklearn._matricize import matrix_shape, resolve_layout
    from seis_sklearn._validation import CHUNK_BYTES

    from ._layout import read_shape

    shape = read_shape(shape, reading)  # prefix tokens dropped, a pooled map
    params, _ = layer_params(seis_params, (1, *shape), reading)
    layout = resolve_layout(params.get("layout", "auto"), len(shape) + 1)
    rows, d = matrix_shape((1, *shape), layout, params.get("matricization", "spatial"))
    width = 2 * d  # the two views side by side
    moments = 3 * d**2 * 8
    if n_samples is not None and n_samples * rows * width * itemsize <= moments:
        return n_samples * rows * width * itemsize
    if itemsize <= 4:  # float32 products of at most 4,096 rows, summed in float64
        # its own buffer (small chunks, pooled) and the shared one (chunks multiplied
        # at once)
        each = moments + width**2 * 4 + 2 * max(4096, rows) * width * 4
    else:  # the rows of a chunk, and one d × d product of the cross block
        each = moments + d**2 * 8 + 2 * max(CHUNK_BYTES, rows * d * 8, 4096 * d * 8)
    return 2 * (each + 2 * rows * width * 8)  # kept and held, with their sums and shifts


def _fit_streamed(layers, kept, held, held_out, bar=None, keep_moments=True, stop=None):
    """What :func:`stream` returns, from one transform's accumulators (``bar``: a
    progress bar moved by one per layer). ``keep_moments=False`` (no metric reads the
    moments): each layer's accumulators are let go as soon as it is fitted, so that the
    memory of the fits does not add to every layer's statistics. ``stop`` (optional):
    returns True once a stop is asked for; checked before each layer's fit, it raises
    :class:`~seis_sklearn.adapters._checkpoint.FitsStopped` with what is fitted."""
    if not layers:
        raise ValueError("inputs gave no batches")
    results, shapes, moments, choices = {}, {}, {}, {}
    for key, plan in layers.items():
        if stop is not None and stop():
            raise FitsStopped((results, shapes, LazyMoments(moments), choices), None, None)
        if bar is not None:
            bar.update(1)
        shapes[key], choices[key] = plan["shape"], plan["choice"]
        if not plan.get("failed") and (
            key not in kept
            or kept[key].n_samples < 2
            or key not in held
            or held[key].n_samples < 2
        ):
            raise ValueError(_too_few_samples(key, kept, held, held_out))
        if not plan.get("failed"):
            if keep_moments:
                fitted, scored = kept[key], held[key]
                moments[key] = functools.partial(_all_moments, fitted, scored)
            else:  # the accumulators go with this layer's fit
                fitted, scored = kept.pop(key), held.pop(key)
            try:
                kept_rows = fitted.rows()
                source = (
                    kept_rows if kept_rows is not None else fitted.result(final=not keep_moments)
                )
                del fitted  # without moments to keep: its arrays go before the algebra
                scorer = _fit_layer(source, kept_rows is not None, plan)
                del source
                if not keep_moments:
                    scorer._release_moments()
                rows = scored.rows()
                if rows is None:
                    results[key] = scorer._score_moments(scored.result(final=not keep_moments))
                else:
                    results[key] = scorer._score_rows(rows, plan["names"])
                continue
            except ValueError as exc:  # no variance, …: a row that says so
                plan["failed"] = first_line(exc)
                moments.pop(key, None)
            finally:
                del scored
        results[key] = unscored(key, plan["failed"], plan["layout"], plan["params"], "held-out")
    return results, shapes, LazyMoments(moments), choices


def _too_few_samples(key, kept, held, held_out):
    """The error of a streamed report whose inputs leave a layer fewer than 2 kept or
    2 held-out samples, with the number of inputs that would do."""
    n_kept = kept[key].n_samples if key in kept else 0
    n_held = held[key].n_samples if key in held else 0
    every = int(round(1.0 / held_out))  # every `every`-th sample is held out
    return (
        f"too few samples: held_out={held_out} holds out every {every}th of the "
        f"{n_kept + n_held} inputs, {n_held} for layer {key!r}, and held-out "
        f"correlations need at least 2 held-out samples (and the fit 2 kept ones): give "
        f"at least {2 * every} inputs"
    )


def _failed_plan(original, seis_params, reading, exc):
    """The plan of a layer that cannot be read (its row says why)."""
    layout = reading.layout if reading is not None else seis_params.get("layout", "auto")
    params = {**seis_params, "matricization": seis_params.get("matricization", "spatial")}
    return dict(
        params=params, choice="", layout=layout, shape=tuple(original.shape[1:]),
        failed=first_line(exc),
    )  # fmt: skip


def unscored(key, reason, layout, params, evaluation):
    """The result of a layer that cannot be scored: NaN scores, the reason in
    ``degenerate_reason``; warns (the report goes on, SPEC §3)."""
    import warnings

    from seis_sklearn import SEISResult

    warnings.warn(f"layer {key!r} not scored: {reason}", LayerNotScoredWarning, stacklevel=3)
    empty = np.empty(0)
    return SEISResult(
        np.nan, np.nan, np.nan, np.nan, empty, empty, empty, 0, 0, np.nan,
        matricization=params.get("matricization", "spatial"), layout=layout,
        evaluation=evaluation, degenerate=True, degenerate_reason=f"not scored: {reason}",
    )  # fmt: skip


class LayerNotScoredWarning(UserWarning):
    """A layer of a report could not be scored; its row has NaN scores and the reason."""


def _fit_layer(source, from_rows, plan):
    """The scorer of one layer fitted on its kept samples: from their rows
    (``from_rows``: the solver chosen as for stored activations, so the Gram solver
    where it is cheaper; torch tensors on their device), else from their moments."""
    from seis_sklearn import SEISScorer

    params = {**plan["params"], "layout": plan["layout"]}
    if from_rows:
        return SEISScorer(**params)._fit_rows(source, plan["names"])
    return SEISScorer(**params)._fit_from_moments(
        source, plan["layout"], plan["shape"], params["matricization"]
    )


def _all_moments(kept, held):
    return kept.result().merge(held.result())


class LazyMoments(dict):
    """Layer key → :class:`~seis_sklearn._moments.Moments`, each computed when first read.

    A streamed layer scored from its kept rows has no moments until a metric asks
    for them (CKA, SVCCA, PWCCA); values are zero-argument callables until then.
    """

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if callable(value):
            value = value()
            self[key] = value
        return value


def _stream_batch(per_view, phase, layers, kept, held, seis_params, readings=None):
    """One batch of every layer into its kept (phase ≠ 0) and held-out (0) accumulators."""
    for key, original in per_view["original"].items():
        pair = [original, per_view["transformed"][key]]
        if layers.get(key) is None:
            reading = (readings or {}).get(key)
            try:
                if reading is not None and reading.skip:
                    raise ValueError(reading.skip.removeprefix("not scored: "))
                layers[key] = _layer_plan(key, original, seis_params, reading)
            except ValueError as exc:  # e.g. a layout that does not fit: this layer only
                layers[key] = _failed_plan(original, seis_params, reading, exc)
        plan = layers[key]
        if plan.get("failed"):
            continue
        if tuple(original.shape[1:]) != plan["shape"]:
            raise ValueError(
                f"layer {key!r} changed shape between batches: {plan['shape']} then "
                f"{tuple(original.shape[1:])}"
            )
        try:
            for store, part in ((kept, phase != 0), (held, phase == 0)):
                if part.any():
                    if key not in store:
                        store[key] = plan["accumulator"](pair)
                    elif getattr(store[key], "inner", True) is None:  # resumed from a stop
                        store[key].inner = plan["accumulator"](pair)
                    store[key].add(pair, np.flatnonzero(part))
        except ValueError as exc:  # NaN/inf activations of this layer: the others go on
            plan["failed"] = first_line(exc)
            kept.pop(key, None)
            held.pop(key, None)


def _layer_plan(key, original, seis_params, reading=None):
    """Parameters, layout and accumulator factory of one layer, from its first batch
    (and its ``reading``, when the report read the layer before the pass)."""
    from seis_sklearn import SEISScorer
    from seis_sklearn._accumulate import RowsFirst
    from seis_sklearn._matricize import check_matricization, resolve_layout

    params, choice = layer_params(seis_params, original.shape, reading)
    scorer = SEISScorer(**params)
    scorer._checked_params()
    layout = resolve_layout(scorer.layout, original.ndim, name=key)
    mode = check_matricization(scorer.matricization)
    names = (f"{key} (original)", f"{key} (transformed)")

    def factory(pair):
        return RowsFirst(pair, layout, mode, names=names)

    return dict(
        params={**params, "matricization": mode}, choice=choice, layout=layout,
        shape=tuple(original.shape[1:]), accumulator=factory, names=names,
    )  # fmt: skip


def _as_dtype(per_view, dtype):
    """The batch's activations converted to ``dtype`` (None: as they are)."""
    if dtype is None:
        return per_view
    dtype = np.dtype(dtype)

    def convert(a):
        if isinstance(a, np.ndarray):
            return a.astype(dtype, copy=False)
        return a.double() if dtype == np.float64 else a.float()  # a torch tensor

    return {view: {k: convert(a) for k, a in rec.items()} for view, rec in per_view.items()}


def _on_host(per_view):
    """The batch as numpy arrays (torch tensors copied to the host)."""
    return {
        view: {k: (a if isinstance(a, np.ndarray) else a.cpu().numpy()) for k, a in rec.items()}
        for view, rec in per_view.items()
    }


STORED_ONLY = {"n_permutations", "n_bootstrap", "confidence", "random_state", "n_jobs"}


def layerwise_rows(
    results,
    shapes,
    module_of,
    transform_name,
    moments=None,
    metrics=(),
    deviation=None,
    choices=None,
    readings=None,
):
    """Report rows (:func:`seis_sklearn.report.result_row`) in the layers' order,
    with the columns of ``metrics`` computed from each layer's ``moments`` (and
    ``channel_eed`` from ``deviation``), how each matricization was chosen and how
    each layer's layout was read (``readings``)."""
    from seis_sklearn.metrics import REPORT_METRICS
    from seis_sklearn.report import result_row

    summed = {
        name: deviation.values(name, moments or {}) if deviation is not None else {}
        for name in metrics
        if name in NOT_FROM_MOMENTS
    }
    rows = []
    for depth, (key, result) in enumerate(results.items()):
        values = {}
        for name in metrics:
            if name in summed:
                values[name] = summed[name].get(key, np.nan)
            elif key not in moments:  # a layer that was not scored
                values[name] = np.nan
            else:
                values[name] = REPORT_METRICS[name](moments[key])
        rows.append(
            result_row(
                result,
                layer=key,
                depth=depth,
                module=module_of(key),
                shape=shapes[key],
                transform=transform_name,
                metrics=values,
                matricization_choice=(choices or {}).get(key, "given"),
                layout_choice=_layout_choice(readings, key),
                remedy=(readings or {}).get(key).remedy if (readings or {}).get(key) else "",
            )
        )
    return rows


def _layout_choice(readings, key):
    reading = (readings or {}).get(key)
    return reading.choice if reading is not None else "given"


def deviation_for(metrics, action, seis_params, readings=None):
    """A :class:`PassSums` when ``metrics`` asks for ``channel_eed``, ``cka`` or
    ``cka_debiased``, else None."""
    cka = [name for name in CKA_COLUMNS if name in metrics]
    if "channel_eed" not in metrics and not cka:
        return None
    eed = (
        ChannelDeviation(action, seis_params.get("layout", "auto"), readings)
        if "channel_eed" in metrics
        else None
    )
    return PassSums(eed, cka=cka)


def in_sample(pairs, seis_params, metrics=(), deviation=None, readings=None, progress=False):
    """In-sample results, shapes, moments (when ``metrics`` need them) and matricization
    choices of pairs (``matricization="auto"`` resolved per layer; a layer of
    ``readings`` is read in its layout and loses its prefix tokens).

    The moments come from the SEIS fit itself (one pass over each pair); only
    the Gram solver and the statistics, which keep none, need a pass of their own.
    """
    from seis_sklearn import SEISScorer, seis_score
    from seis_sklearn._accumulate import accumulate
    from seis_sklearn._matricize import resolve_layout

    need_moments = bool(set(metrics) - NOT_FROM_MOMENTS)
    results, shapes, moments, choices = {}, {}, {}, {}
    bar = progress_bar(len(pairs), progress, desc="layers fitted", unit="layer")
    for k, (a, b) in pairs.items():
        if bar is not None:
            bar.update(1)
        reading = (readings or {}).get(k)
        a, b = read_as(a, reading), read_as(b, reading)
        shapes[k] = a.shape[1:]
        params, choices[k] = layer_params(seis_params, a.shape, reading)
        names = (f"{k} (original)", f"{k} (transformed)")
        try:
            if reading is not None and reading.skip:
                raise ValueError(reading.skip.removeprefix("not scored: "))
            if set(params) & STORED_ONLY:
                results[k] = seis_score(a, b, cv=None, **params)
            else:  # what seis_score(a, b) does, keeping the scorer's moments
                scorer = SEISScorer(**params)._fit(
                    a, b, names=names, streaming=False, store_components=False
                )
                results[k], moments[k] = scorer.result_, scorer._moments
            if need_moments and moments.get(k) is None:
                layout = resolve_layout(params.get("layout", "auto"), a.ndim)
                mode = params.get("matricization", "spatial")
                moments[k] = accumulate([a, b], layout, mode, names=names)
        except ValueError as exc:  # no variance, NaN, a layout that does not fit: this layer
            layout = params.get("layout", "auto")
            results[k] = unscored(k, first_line(exc), layout, params, "in-sample")
            moments.pop(k, None)
            continue
        if deviation is not None:
            mode = params.get("matricization", "spatial")
            plan = {"layout": resolve_layout(params.get("layout", "auto"), a.ndim),
                    "params": {"matricization": mode}}  # fmt: skip
            deviation.add({"original": {k: a}, "transformed": {k: b}}, {k: plan}, whole=True)
    if bar is not None:
        bar.close()
    return results, shapes, moments, choices


def _store(storage, pieces, key, view, array, rows, n_total, out, paired):
    start, stop = rows
    slot = (key, view)
    if n_total is None:
        pieces.setdefault(slot, []).append(array)
        return
    if slot not in storage:
        if start != 0:
            raise ValueError(
                f"layer {key!r} appeared only after the first batch: the number of calls "
                "of a module must be the same for every batch"
            )
        shape = (n_total,) + array.shape[1:]
        if out is None:
            storage[slot] = np.empty(shape, dtype=array.dtype)
        else:
            folder = Path(out)
            folder.mkdir(parents=True, exist_ok=True)
            name = safe_stem(key) + (f".{view}" if paired else "") + ".npy"
            # written under a temporary name, renamed when the whole run has finished
            storage[slot] = np.lib.format.open_memmap(
                folder / f".{name}.partial", mode="w+", dtype=array.dtype, shape=shape
            )
    target = storage[slot]
    if target.shape[1:] != array.shape[1:]:
        raise ValueError(
            f"layer {key!r} changed shape between batches: {target.shape[1:]} then "
            f"{array.shape[1:]}"
        )
    target[start:stop] = array


def _finish_files(storage, keep):
    """Rename finished memory maps to their final names, or delete them after an error."""
    for array in storage.values():
        if not isinstance(array, np.memmap):
            continue
        partial = Path(array.filename)
        final = partial.with_name(partial.name[1 : -len(".partial")])
        if keep:
            array.flush()
            os.replace(partial, final)
        else:
            partial.unlink(missing_ok=True)


def _write_manifest(out, storage, module_of, transform_name, layouts=None):
    """The saved-pairs manifest (:mod:`seis_sklearn.io`): layers in execution order,
    with the layout of each layer that ``layouts`` (key → layout) names."""
    from seis_sklearn.io import write_manifest

    keys = list(dict.fromkeys(k for k, _ in storage))
    layers = [{"name": k, "file": safe_stem(k), "module": module_of(k)} for k in keys]
    for layer in layers:
        if (layouts or {}).get(layer["name"]) is not None:
            layer["layout"] = layouts[layer["name"]]
    write_manifest(out, layers, transform=transform_name)
