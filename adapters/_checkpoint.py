"""Streamed statistics saved when a run is asked to stop, and resumed from.

A report whose transforms share one pass over the inputs finishes all of them at the
end of that pass: stopped at 60 % (SIGINT, SIGTERM), it had nothing finished to keep.
With a :class:`Checkpoint`, :func:`~seis_sklearn.adapters._common.stream_views` checks
between batches whether a stop was asked for; if so it saves every layer's kept and
held-out statistics as ``.npz`` files of plain arrays (no pickles) — the rows
themselves where the layer still keeps rows (:class:`~seis_sklearn._accumulate.RowsFirst`:
fewer bytes than their moments), else the exact, mergeable moments of the samples seen
(:class:`~seis_sklearn._moments.Moments`) — and the position reached, then raises
:class:`KeyboardInterrupt`. A resumed run restores them, skips the samples already
seen, and goes on: a layer that kept rows is fitted from the same rows by the same
solver as in an uninterrupted run (the same numbers; fitted from moments instead, a
wide layer with k close to its rows read up to 2e-3 apart: float32 products of its
moments against the rows' float64 algebra), one that accumulated moments from the same
moments merged (float32 rounding).

A stop asked for after the pass, while the layers are fitted, takes effect at the next
layer (:class:`FitsStopped`): the checkpoint then holds the whole pass's statistics of
the layers not yet fitted and the report rows of those fitted, so a resumed run skips
the pass and fits only the rest (:meth:`Checkpoint.finished_rows`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from seis_sklearn._files import atomic_write, safe_stem
from seis_sklearn._moments import Moments
from seis_sklearn.metrics import MinibatchCKA

MANIFEST = "checkpoint.json"
# 2: the CKA columns' minibatch sums (earlier: the rows' norms of a matricized CKA);
# 3: kept rows saved as rows, a finished pass and the rows of fitted layers; a checkpoint
# of another format is not resumed from (the pass starts afresh)
FORMAT = "seis-checkpoint-3"


class FitsStopped(KeyboardInterrupt):
    """A stop asked for while a finished pass's layers were fitted, raised before the
    next layer's fit.

    Attributes
    ----------
    done : dict
        View key → what :func:`~seis_sklearn.adapters._common.stream` returns, for the
        layers fitted before the stop (all of a view's layers, or the first ones in
        order).
    state : dict
        View key → the pass's (plans, kept, held) accumulators.
    position : int
        Samples streamed: the whole pass.
    """

    def __init__(self, done, state, position):
        super().__init__("stopped between the fits of the layers")
        self.done, self.state, self.position = done, state, position


class Resumed:
    """An accumulator that starts from saved moments and adds later batches to an
    ordinary accumulator (``inner``, made at the first batch after the resume)."""

    def __init__(self, moments):
        self.moments, self.inner = moments, None

    @property
    def n_samples(self):
        return self.moments.n_samples + (self.inner.n_samples if self.inner else 0)

    def add(self, arrays, indices=None):
        self.inner.add(arrays, indices)
        return self

    def rows(self):
        return None  # the saved samples are moments: fitted from moments

    def result(self, final=False):
        if self.inner is None or not self.inner.n_samples:
            return self.moments
        return self.moments.merge(self.inner.result(final=final))


def _view_name(view):
    return view[1] if isinstance(view, tuple) else str(view)


class Checkpoint:
    """Where a streamed pass saves its statistics on a stop, and resumes from them.

    Parameters
    ----------
    folder : path-like
        The checkpoint's folder (created when something is saved).
    stop_requested : callable
        Returns True once the run has been asked to stop (the command line's
        SIGINT/SIGTERM handler sets it).
    """

    def __init__(self, folder, stop_requested):
        self.folder = Path(folder)
        self.stop_requested = stop_requested
        self._saved = self._read()

    def _read(self):
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            return None
        return saved if isinstance(saved, dict) and saved.get("format") == FORMAT else None

    def start(self, views):
        """Samples already streamed for exactly these ``views`` (0: start afresh)."""
        names = sorted(_view_name(v) for v in views)
        if self._saved is None or sorted(self._saved["views"]) != names:
            return 0
        return int(self._saved["position"])

    def pass_finished(self, views):
        """Whether the saved statistics of these ``views`` are those of the whole pass
        (saved after it, between the layers' fits): a resumed run streams nothing."""
        return bool(self.start(views)) and bool(self._saved.get("pass_finished"))

    def finished_rows(self, view):
        """The report rows of the layers of ``view`` fitted before a stop (after the
        pass), in the layers' order; [] when none."""
        if self._saved is None:
            return []
        return list(self._saved["views"].get(_view_name(view), {}).get("rows", []))

    def seed(self, views, state, deviations):
        """Fill the pass's state (plans of failed layers, resumed accumulators, channel
        deviations) from the saved checkpoint; call only when :meth:`start` is > 0."""
        for view in views:
            saved = self._saved["views"][_view_name(view)]
            layers, kept, held = state[view]
            for key, entry in saved["layers"].items():  # in the layers' order
                if entry.get("failed"):
                    layers[key] = entry["plan"]
                    continue
                if "plan" in entry:  # the pass finished: no batch comes to remake it
                    layers[key] = {**entry["plan"], "shape": tuple(entry["plan"]["shape"]),
                                   "names": tuple(entry["plan"]["names"])}  # fmt: skip
                else:
                    layers[key] = None  # its plan is made again from the next batch
                kept[key] = _restore(self.folder, entry["kept"])
                held[key] = _restore(self.folder, entry["held"])
            deviation = deviations.get(view)
            if deviation is not None and deviation.eed is not None and saved.get("deviation"):
                sums, counts, failed = saved["deviation"]
                deviation.eed.sums.update(sums)
                deviation.eed.counts.update(counts)
                deviation.eed.failed.update(failed)
            if deviation is not None and deviation.cka is not None:
                for key, name in saved.get("cka", {}).items():
                    with np.load(self.folder / name) as arrays:
                        deviation.cka[key] = MinibatchCKA.from_state(dict(arrays))

    def save(self, position, views, state, deviations, rows=None):
        """Save every layer's statistics and the position reached (files first, the
        manifest last: a half-written checkpoint is never read).

        ``rows`` (a stop after the pass, :class:`FitsStopped`): view key → the report
        rows of its layers fitted before the stop; those layers' statistics are not
        saved, the others' are, and the checkpoint marks the pass as finished.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        finished = rows is not None
        manifest = {"format": FORMAT, "position": int(position), "views": {},
                    "pass_finished": finished}  # fmt: skip
        for i, view in enumerate(views):
            layers, kept, held = state[view]
            entries = {}
            done = {row["layer"] for row in (rows or {}).get(view, [])}
            for j, (key, plan) in enumerate(layers.items()):
                if key in done:
                    continue
                if plan.get("failed") or key not in kept or key not in held:
                    plan = {k: v for k, v in plan.items() if k != "accumulator"}
                    plan["failed"] = plan.get("failed") or "no samples before the stop"
                    entries[key] = {"failed": plan["failed"], "plan": _jsonable(plan)}
                    continue
                stem = f"v{i:03d}-l{j:04d}-{safe_stem(key)}"
                entries[key] = {
                    "kept": _save_accumulator(self.folder, f"{stem}.kept.npz", kept[key]),
                    "held": _save_accumulator(self.folder, f"{stem}.held.npz", held[key]),
                }
                if finished:  # no batch will remake the plan
                    entries[key]["plan"] = _jsonable(
                        {k: v for k, v in plan.items() if k != "accumulator"}
                    )
            deviation = deviations.get(view)
            record = {"layers": entries}
            if finished:
                record["rows"] = _jsonable(rows.get(view, []))
            if deviation is not None and deviation.eed is not None:
                eed = deviation.eed
                record["deviation"] = [eed.sums, eed.counts, sorted(eed.failed)]
            if deviation is not None and deviation.cka is not None:
                record["cka"] = {}
                for j, (key, sums) in enumerate(deviation.cka.items()):
                    name = f"v{i:03d}-c{j:04d}-{safe_stem(key)}.cka.npz"
                    with open(self.folder / name, "wb") as f:
                        np.savez(f, **sums.state())
                    record["cka"][key] = name
            manifest["views"][_view_name(view)] = record
        atomic_write(self.folder / MANIFEST, (json.dumps(manifest) + "\n").encode())

    def clear(self):
        """Remove the checkpoint (its pass finished)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._saved = None


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _save_accumulator(folder, name, accumulator):
    """Save a layer's kept or held-out statistics in ``folder/name``; returns the entry
    that :func:`_restore` reads back: the rows themselves where the accumulator still
    keeps rows (:class:`~seis_sklearn._accumulate.RowsFirst`, in its parts), so that a
    resumed run fits and scores them as an uninterrupted one does; else the moments."""
    parts = _kept_parts(accumulator)
    if parts is None:
        _save(folder / name, accumulator.result())
        return {"moments": name}
    import io

    device = dtype = None
    arrays = {}
    for i, part in enumerate(parts):
        for g, array in enumerate(part):
            if not isinstance(array, np.ndarray):  # a torch tensor: saved from the host
                device, dtype = str(array.device), str(array.dtype).removeprefix("torch.")
                if dtype == "bfloat16":  # no numpy dtype: float32 holds it exactly
                    array = array.float()
                array = array.cpu().numpy()
            arrays[f"p{i:06d}v{g}"] = array
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(folder / name, buffer.getvalue())
    return {
        "rows": name, "parts": len(parts), "views": len(parts[0]), "device": device,
        "torch_dtype": dtype,
        "layout": accumulator.layout, "matricization": accumulator.matricization,
        "names": list(accumulator.names) if accumulator.names is not None else None,
        "budget": int(accumulator.budget),
    }  # fmt: skip


def _kept_parts(accumulator):
    """The parts of the rows a :class:`~seis_sklearn._accumulate.RowsFirst` still keeps
    (None: it accumulates moments)."""
    from seis_sklearn._accumulate import RowsFirst

    if not isinstance(accumulator, RowsFirst) or not accumulator.kept or not accumulator._parts:
        return None
    return accumulator._parts


def _restore(folder, entry):
    """The accumulator :func:`_save_accumulator` saved: a
    :class:`~seis_sklearn._accumulate.RowsFirst` holding the same parts of rows (where
    they were, numpy or torch on their device), or :class:`Resumed` moments."""
    if "moments" in entry:
        return Resumed(_load(folder / entry["moments"]))
    from seis_sklearn._accumulate import RowsFirst

    with np.load(folder / entry["rows"], allow_pickle=False) as data:
        parts = [
            [data[f"p{i:06d}v{g}"].copy() for g in range(entry["views"])]
            for i in range(entry["parts"])
        ]
    if entry["device"] is not None:
        import torch

        dtype = getattr(torch, entry["torch_dtype"])
        parts = [
            [torch.from_numpy(a).to(device=entry["device"], dtype=dtype) for a in part]
            for part in parts
        ]
    names = tuple(entry["names"]) if entry["names"] is not None else None
    restored = RowsFirst(parts[0], entry["layout"], entry["matricization"], names=names,
                         budget=entry["budget"])  # fmt: skip
    for part in parts:
        restored.add(part)
    return restored


def _save(path, moments):
    import io

    buffer = io.BytesIO()
    np.savez(
        buffer, n_samples=np.int64(moments.n_samples), mean=moments.mean, auto=moments.auto,
        cross=moments.cross,
    )  # fmt: skip
    atomic_write(path, buffer.getvalue())


def _load(path):
    with np.load(path, allow_pickle=False) as data:
        return Moments(
            int(data["n_samples"]), data["mean"].copy(), data["auto"].copy(), data["cross"].copy()
        )
