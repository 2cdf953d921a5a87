"""The synthetic validation demo: a table, a CSV and a PNG, with the known ground truth."""

import csv

import numpy as np
import pytest

from seis_sklearn import demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # 24 digits: the ground truth below holds as at 40 (identities 1.000; flips and
    # 180° S_E 1.000, S_I <= 0.07) in a quarter of the time (7 s against 28 s: the
    # d = 1,024 decompositions, which the sketch takes over when the rows are few)
    assert demo.main(["--out", str(out), "--samples", "24", "--cv", "2"]) == 0
    return out


def test_demo_writes_table_csv_and_png(demo_run, capsys):
    with open(demo_run / "synthetic_validation.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(demo.sweep_transforms()) == 28
    assert (demo_run / "synthetic_validation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(demo_run.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_demo_ground_truth(demo_run):
    with open(demo_run / "synthetic_validation.csv") as fh:
        rows = {r["transform"]: r for r in csv.DictReader(fh)}
    for identity in ("rotate 0°", "shift 0 px"):
        assert float(rows[identity]["equivariance"]) == pytest.approx(1, abs=1e-5)
        assert float(rows[identity]["invariance"]) == pytest.approx(1, abs=1e-5)
    for exact in ("flip horizontal", "flip vertical", "rotate 180°"):
        # involutions map the pooled subspace onto itself: fully equivariant
        assert float(rows[exact]["equivariance"]) > 0.99
        assert float(rows[exact]["invariance"]) < 0.5


def test_activations_are_deterministic_relu_maps():
    a = demo.digits_activations(n_samples=5, n_filters=3)
    b = demo.digits_activations(n_samples=5, n_filters=3)
    assert a.shape == (5, 3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and a.min() == 0.0 and a.max() > 0


def test_table_format():
    row = {
        "transform": "shift 1 px",
        "equivariance": 0.97,
        "invariance": 0.5,
        "equivariance_weighted": 1.0,
        "invariance_weighted": 0.9,
        "k": 12,
    }
    lines = demo.format_table([row]).splitlines()
    assert lines[0].split() == ["transform", "S_E", "S_I", "S_E^w", "S_I^w", "k"]
    assert lines[2].split() == ["shift", "1", "px", "0.970", "0.500", "1.000", "0.900", "12"]


def test_cli_rejects_too_few_samples(capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(["--samples", "3", "--cv", "3"])
    assert exc.value.code == 2
    assert "--samples must be at least twice --cv" in capsys.readouterr().err
