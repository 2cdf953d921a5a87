"""The embedded PyTorch demo, on a short run: the report's files, schema and sanity."""

import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters.torch import demo  # noqa: E402

from seis_sklearn.report import COLUMNS  # noqa: E402


def test_short_demo_run_writes_the_report(tmp_path, monkeypatch):
    import sklearn.datasets  # noqa: F401 - its OpenMP pool too starts at the 2 below
    from threadpoolctl import threadpool_info, threadpool_limits

    lines, threads = [], []
    train = demo.train

    def counted(*args, **kwargs):  # the thread pools the training runs on
        threads.append((torch.get_num_threads(), {p["num_threads"] for p in threadpool_info()}))
        return train(*args, **kwargs)

    monkeypatch.setattr(demo, "train", counted)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # whatever the suite's environment set
    try:
        with threadpool_limits(limits=2):
            table = demo.run(tmp_path, epochs=1, n_test=200, log=lines.append)
            after = torch.get_num_threads(), {p["num_threads"] for p in threadpool_info()}
    finally:
        torch.set_num_threads(before)
    # one thread for the run (spinning pools on a busy machine), restored after
    assert threads == [(1, {1})] * 2
    assert after == (2, {2})
    assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"
    header = (tmp_path / "report.csv").read_text().splitlines()[0].split(",")
    assert header == [*COLUMNS, "model", "train_seconds", "test_accuracy"]
    assert set(table["model"]) == {"plain", "rotation-augmented"}
    assert len(table) == 2 * len(demo.LAYERS) * len(demo.TRANSFORMS)
    assert set(table["evaluation"]) == {"held-out"}
    assert ((table["invariance"] <= table["equivariance"]) & (table["equivariance"] <= 1)).all()
    assert table["test_accuracy"].between(0, 1).all()
    # progress: a line per epoch, then the accuracy, then the scoring's start and end
    for name in ("plain", "rotation-augmented"):
        mine = [line.removeprefix(f"{name}: ") for line in lines if line.startswith(name)]
        assert [line.split()[0] for line in mine] == ["epoch", "trained", "scoring", "scored"]
        assert mine[0].startswith("epoch 1/1: loss ") and "test accuracy" in mine[1]
    text = demo.format_table(table)
    assert "rotation-augmented" in text and "block1" in text


def test_random_rotations_keep_a_centred_disc_and_change_the_image():
    x = torch.from_numpy(demo.digits_images()[0][:8])
    turned = demo.random_rotations(x, torch.Generator().manual_seed(0))
    assert turned.shape == x.shape and not torch.allclose(turned, x)
    # rotations keep (up to interpolation) the mass of a digit that sits inside the disc
    ratio = turned.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert np.all((ratio.numpy() > 0.8) & (ratio.numpy() < 1.2))


def test_cnn_shapes():
    model = demo.make_cnn()
    names = [n for n, _ in model.named_children()]
    assert names[:4] == ["block1", "block2", "block3", "block4"] and names[-1] == "head"
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_train_logs_every_epoch():
    images, labels = demo.digits_images()
    lines = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading the loss warns about nothing
        demo.train(demo.make_cnn(), images[:96], labels[:96], augment=True, epochs=3,
                   log=lines.append)  # fmt: skip
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all(float(line.split("loss ")[1].split(",")[0]) > 0 for line in lines)


# The process is held once its first epoch is trained (it writes "held" past Python's
# buffers, then waits on stdin): the epoch's line must be in the pipe before "held".
HELD = """
import os, sys
from seis_sklearn.adapters.torch import demo
def held(*args, **kwargs):
    os.write(2, b"held\\n")
    sys.stdin.readline()
    raise SystemExit(3)
demo.accuracy = held
"""
ENTRIES = {
    "seis demo": "from seis_sklearn.cli import console; sys.exit(console())",
    "python -m ...demo": "sys.exit(demo.main(sys.argv[1:]))",
}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_the_demo_prints_each_epoch_into_a_pipe_as_it_ends(entry, tmp_path):
    argv = ["demo"] if entry == "seis demo" else []
    process = subprocess.Popen(
        [sys.executable, "-c", HELD + ENTRIES[entry], *argv, "--epochs", "1",
         "--out", str(tmp_path / "demo")],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    guard = threading.Timer(600, process.kill)  # only against a hang
    guard.start()
    seen = []
    try:
        for line in process.stderr:
            if line == "held\n":
                break
            seen.append(line)
        else:
            pytest.fail(f"the demo ended before it was held: {''.join(seen)}")
        assert any(line.startswith("plain: epoch 1/1: loss ") for line in seen), seen
    finally:
        guard.cancel()
        process.kill()
        process.wait()


def test_the_entry_points_and_the_readme_train_the_demos_epochs():
    """``seis demo``, ``python -m ...demo`` and ``demo.run`` train the same epochs, the
    ones the README's table says it was made with."""
    import inspect
    from pathlib import Path

    from seis_sklearn.cli import build_parser

    assert inspect.signature(demo.run).parameters["epochs"].default == demo.EPOCHS
    assert build_parser().parse_args(["demo"]).epochs == demo.EPOCHS
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"What our run shows ({demo.EPOCHS} epochs each" in readme
