"""Streamed statistics saved when a run is asked to stop, and resumed from.

A report whose transforms share one pass over the inputs finishes all of them at the
end of that pass: stopped at 60 % (SIGINT, SIGTERM), it had nothing finished to keep.
With a :class:`Checkpoint`, :func:`~seis_sklearn.adapters._common.stream_views` checks
between batches whether a stop was asked for; if so it saves every layer's kept and
held-out statistics — the exact, mergeable moments of the samples seen
(:class:`~seis_sklearn._moments.Moments`), as ``.npz`` files of plain arrays (no
pickles) — and the position reached, then raises :class:`KeyboardInterrupt`. A resumed
run restores them, skips the samples already seen, and merges: the scores are those of
an uninterrupted run (to rounding: a layer whose rows were kept is fitted from its
moments after a resume).
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
# 2: the CKA columns' minibatch sums (earlier: the rows' norms of a matricized CKA); a
# checkpoint of another format is not resumed from (the pass starts afresh)
FORMAT = "seis-checkpoint-2"


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
                layers[key] = None  # its plan is made again from the next batch
                kept[key] = Resumed(_load(self.folder / entry["kept"]))
                held[key] = Resumed(_load(self.folder / entry["held"]))
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

    def save(self, position, views, state, deviations):
        """Save every layer's statistics and the position reached (files first, the
        manifest last: a half-written checkpoint is never read)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "position": int(position), "views": {}}
        for i, view in enumerate(views):
            layers, kept, held = state[view]
            entries = {}
            for j, (key, plan) in enumerate(layers.items()):
                if plan.get("failed") or key not in kept or key not in held:
                    plan = {k: v for k, v in plan.items() if k != "accumulator"}
                    plan["failed"] = plan.get("failed") or "no samples before the stop"
                    entries[key] = {"failed": plan["failed"], "plan": _jsonable(plan)}
                    continue
                stem = f"v{i:03d}-l{j:04d}-{safe_stem(key)}"
                _save(self.folder / f"{stem}.kept.npz", kept[key].result())
                _save(self.folder / f"{stem}.held.npz", held[key].result())
                entries[key] = {"kept": f"{stem}.kept.npz", "held": f"{stem}.held.npz"}
            deviation = deviations.get(view)
            record = {"layers": entries}
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
