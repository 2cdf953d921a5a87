"""Issue 38, items 8 and 9: a resumed report is the report, and a stop asked for after
the pass is acted on.

8. SIGTERM mid-pass, then --resume: a wide layer (4×15×15 = 900 features, 192 kept
   samples) was fitted from its kept rows when uninterrupted and from their moments after
   the resume (float32 products against the rows' float64 algebra): S_E 2e-3 apart. The
   checkpoint now saves the rows a layer keeps, and the resume fits them as the
   uninterrupted run does.
9. A signal during the fits or the writing was recorded and never acted on (rc 0 after
   every fit, and a scheduler's SIGKILL then lost the pass). Now it is said at once, the
   run stops before the next layer's fit with the pass's statistics and the fitted rows
   saved, and --resume fits only the rest without streaming the inputs again.

Every stop waits for an event — a line the child prints where a hook holds it on its
stdin — never for the clock.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pd = pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parents[1]

# The model, and the test's hooks (environment variables, set only by the tests that
# stop a run): each prints a line on stdout and waits for the test to close its stdin.
WIDE = """
import os, sys, torch

import seis_sklearn.cli as cli
import seis_sklearn.adapters._common as common

HOLD_FORWARD = int(os.environ.get("SEIS_TEST_HOLD_FORWARD", "0"))  # n-th whole-batch forward
HOLD_FIT = int(os.environ.get("SEIS_TEST_HOLD_FIT", "0"))  # in the n-th layer's fit
HOLD_WRITE = os.environ.get("SEIS_TEST_HOLD_WRITE") == "1"  # writing the first row
NO_PASS = os.environ.get("SEIS_TEST_NO_PASS") == "1"  # a whole batch is an error
calls, fits, writes = [], [], []


def hold(line):
    print(line, flush=True)
    sys.stdin.read()  # until the test closes it


fit_layer = common._fit_layer


def counted_fit(source, from_rows, plan):
    fits.append(plan["names"][0])
    print(f"fit: {plan['names'][0]}", flush=True)
    if len(fits) == HOLD_FIT:
        hold("in the fits")
    return fit_layer(source, from_rows, plan)


common._fit_layer = counted_fit
write_row = cli._write_row


def held_write(*args):
    writes.append(1)
    write_row(*args)
    if HOLD_WRITE and len(writes) == 1:
        hold("writing")


cli._write_row = held_write


class Wide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)  # 4×15×15: 900 features
        self.mix = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        if len(x) == 16:  # a whole batch (the probe's are of 2)
            if NO_PASS:
                raise RuntimeError("the pass ran again")
            calls.append(1)
            if len(calls) == HOLD_FORWARD:
                hold("in the pass")
        h = torch.relu(self.conv(x))
        return self.head(torch.relu(self.mix(h)).mean(dim=(2, 3)))


def wide():
    return Wide()
"""

BASE = ["report", "--model", "wide.py:wide", "--inputs", "x.npy", "--transform", "hflip",
        "--batch-size", "16", "-q", "--matricization", "flatten",
        "--metrics", "cka_debiased", "--metrics", "channel_eed", "--metrics", "svcca"]  # fmt: skip
SCORES = ["equivariance", "invariance", "equivariance_weighted", "invariance_weighted"]
METRICS = ["cka_debiased", "channel_eed", "svcca"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The model, 240 inputs of 3×15×15 (192 kept, 48 held out) and the uninterrupted
    report."""
    folder = tmp_path_factory.mktemp("resume")
    (folder / "wide.py").write_text(WIDE)
    x = np.random.default_rng(0).normal(size=(240, 3, 15, 15)).astype(np.float32)
    np.save(folder / "x.npy", x)
    whole = _seis([*BASE, "--out", "whole"], folder)
    assert whole.returncode == 0, whole.stderr
    return folder


def _env(cwd, **hooks):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{cwd}", "OMP_NUM_THREADS": "1"}
    return {**env, **{f"SEIS_TEST_{k.upper()}": str(v) for k, v in hooks.items()}}


def _seis(args, cwd, **hooks):
    return subprocess.run(
        [sys.executable, "-m", "seis_sklearn", *args], capture_output=True, text=True, cwd=cwd,
        env=_env(cwd, **hooks), timeout=600,
    )  # fmt: skip


def _stopped(cwd, out, marker, signals=("SIGTERM",), base=BASE, **hooks):
    """Run the report until the hook prints ``marker``, send ``signals`` (each after the
    run has said on stderr that the one before was received), let it go on; returns
    (rc, the stderr lines read before it went on, the rest of stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "seis_sklearn", *base, "--out", out], cwd=cwd,
        env=_env(cwd, **hooks), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    hang = threading.Timer(600, proc.kill)  # only a safety net against a hang
    hang.start()
    said = []
    try:
        line = proc.stdout.readline()
        while line.startswith("fit: "):
            line = proc.stdout.readline()
        assert line == f"{marker}\n", proc.stderr.read()
        for i, name in enumerate(signals):
            proc.send_signal(getattr(signal, name))
            if i == 0:  # said at once: while the run is still held
                said.append(proc.stderr.readline())
                while said[-1] and "received" not in said[-1]:
                    said.append(proc.stderr.readline())
        _, err = proc.communicate()  # closes stdin: the hook lets the run go on
    finally:
        hang.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, said, err


def _rows(folder):
    files = sorted((folder / "rows").glob("*.json"))
    return pd.DataFrame([json.loads(f.read_text()) for f in files])


def _same_report(work, out, whole="whole"):
    """The resumed rows equal the uninterrupted ones: every layer, score and metric
    column, to float32 rounding (the wide layers: exactly)."""
    got, want = _rows(work / out), _rows(work / whole)
    assert got[["transform", "layer", "depth"]].equals(want[["transform", "layer", "depth"]])
    columns = SCORES + METRICS
    gap = np.abs(got[columns].to_numpy(float) - want[columns].to_numpy(float))
    assert np.nanmax(gap) < 1e-6, gap
    assert (got[columns].isna() == want[columns].isna()).all().all()
    wide = got["shape"] == "4×15×15"
    assert wide.sum() == 2 * got["transform"].nunique()
    assert (got.loc[wide, SCORES].to_numpy() == want.loc[wide, SCORES].to_numpy()).all()
    csv = (work / out / "report.csv").read_text()
    assert csv == (work / whole / "report.csv").read_text()


def test_a_resume_mid_pass_gives_the_report_of_an_uninterrupted_run(work):
    """Item 8: 2.0e-3 apart in S_E on the 900-feature layers before."""
    rc, said, err = _stopped(work, "cut", "in the pass", hold_forward=7)
    assert rc == 130, err
    assert "SIGTERM received: stopping at the next batch" in said[-1]
    saved = json.loads((work / "cut" / "checkpoint" / "checkpoint.json").read_text())
    assert 0 < saved["position"] < 240 and not saved["pass_finished"]
    assert f"unfinished pass (hflip) over its first {saved['position']} samples" in err
    entries = saved["views"]["hflip"]["layers"]
    assert "rows" in entries["conv"]["kept"] and "rows" in entries["conv"]["held"]
    resumed = _seis([*BASE, "--out", "cut", "--resume"], work)
    assert resumed.returncode == 0, resumed.stderr
    _same_report(work, "cut")


def test_a_stop_in_the_fits_keeps_the_pass_and_resumes_without_it(work):
    """Item 9: one SIGTERM during the second layer's fit: said at once, the run stops
    before the third with the pass's statistics and two rows saved; --resume streams
    nothing (a whole batch is an error there) and fits the third layer only."""
    rc, said, err = _stopped(work, "fits", "in the fits", hold_fit=2)
    assert rc == 130, err
    assert "after the layer being fitted" in said[-1]
    saved = json.loads((work / "fits" / "checkpoint" / "checkpoint.json").read_text())
    assert saved["pass_finished"] and saved["position"] == 240
    view = saved["views"]["hflip"]
    assert [row["layer"] for row in view["rows"]] == ["conv", "mix"]
    assert list(view["layers"]) == ["head"]
    assert "the statistics of the whole pass over 240 samples (hflip)" in err
    assert "the rows of the 2 layers fitted after it" in err
    assert not list((work / "fits" / "rows").glob("*.json"))  # a transform's rows go together
    resumed = _seis([*BASE, "--out", "fits", "--resume"], work, no_pass=1)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("fit: ") == 1 and "fit: head (original)" in resumed.stdout
    assert not (work / "fits" / "checkpoint").exists()
    _same_report(work, "fits")


def test_a_stop_while_the_rows_are_written_ends_the_run(work):
    """Item 9: a signal while the last pass's rows were written: rc 0 and nothing said
    before. Now said at once, and the run stops once the rows are written (rc 130);
    --resume has nothing to compute and writes the same report."""
    rc, said, err = _stopped(work, "writing", "writing", hold_write=1)
    assert rc == 130, err
    assert "received: stopping" in said[-1]
    assert len(list((work / "writing" / "rows").glob("*.json"))) == 3
    assert "kept in writing (--resume): 3 finished layer results" in err
    resumed = _seis([*BASE, "--out", "writing", "--resume"], work, no_pass=1)
    assert resumed.returncode == 0, resumed.stderr
    assert "fit: " not in resumed.stdout
    _same_report(work, "writing")


def test_a_second_signal_says_nothing_of_the_pass_was_saved(work):
    """Item 9: two signals mid-pass said 'the statistics of an unfinished pass are
    kept' though none were; the message now says what is there."""
    rc, _, err = _stopped(work, "twice", "in the pass", ("SIGTERM", "SIGTERM"), hold_forward=7)
    assert rc == 130, err
    assert not (work / "twice" / "checkpoint").exists()
    assert "statistics of an unfinished pass are kept" not in err
    assert "no statistics of an unfinished pass (none saved): --resume redoes it" in err
    resumed = _seis([*BASE, "--out", "twice", "--resume"], work)
    assert resumed.returncode == 0, resumed.stderr
    _same_report(work, "twice")


def test_a_stop_in_the_second_transforms_fits_keeps_the_first_transforms_rows(work):
    """Item 9 with two transforms sharing the pass: the stop lands in the fit of the
    second transform's first layer; the first transform's three rows and that one are
    kept, --resume fits the second transform's two other layers only."""
    base = [*BASE, "--transform", "vflip"]
    whole = _seis([*base, "--out", "whole2"], work)
    assert whole.returncode == 0, whole.stderr
    rc, said, err = _stopped(work, "fits2", "in the fits", base=base, hold_fit=4)
    assert rc == 130, err
    saved = json.loads((work / "fits2" / "checkpoint" / "checkpoint.json").read_text())
    rows = {name: [row["layer"] for row in view["rows"]] for name, view in saved["views"].items()}
    assert rows == {"hflip": ["conv", "mix", "head"], "vflip": ["conv"]}
    assert list(saved["views"]["vflip"]["layers"]) == ["mix", "head"]
    assert "the rows of the 4 layers fitted after it" in err
    resumed = _seis([*base, "--out", "fits2", "--resume"], work, no_pass=1)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("fit: ") == 2
    _same_report(work, "fits2", "whole2")


def test_kept_rows_are_saved_and_restored_as_they_were(tmp_path):
    """Item 8's kind: kept rows come back where and as they were (numpy, or torch tensors
    of their dtype — bfloat16 too, which numpy cannot hold), in the same parts, under
    the same budget; moments stay moments."""
    import torch
    from seis_sklearn.adapters._checkpoint import Resumed, _restore, _save_accumulator

    from seis_sklearn._accumulate import RowsFirst

    rng = np.random.default_rng(0)
    for make in (np.asarray, lambda a: torch.from_numpy(a).to(torch.bfloat16)):
        batches = [[make(rng.normal(size=(n, 2, 3, 3)).astype(np.float32)) for _ in "ab"]
                   for n in (5, 3)]  # fmt: skip
        rows = RowsFirst(batches[0], "NCHW", "flatten", names=("a", "b"))
        for batch in batches:
            rows.add(batch)
        entry = _save_accumulator(tmp_path, "rows.npz", rows)
        back = _restore(tmp_path, entry)
        assert isinstance(back, RowsFirst) and back.kept and back.budget == rows.budget
        assert back.n_samples == 8 and len(back._parts) == 2
        for got, want in zip(back.rows(), rows.rows(), strict=True):
            assert type(got) is type(want) and got.dtype == want.dtype
            assert (_host(got) == _host(want)).all()
        small = RowsFirst(batches[0], "NCHW", "flatten", names=("a", "b"), budget=0)
        small.add(batches[0])  # past its budget: moments
        assert isinstance(_restore(tmp_path, _save_accumulator(tmp_path, "m.npz", small)), Resumed)


def _host(array):
    return array if isinstance(array, np.ndarray) else array.float().numpy()
