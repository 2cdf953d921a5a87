"""A report's budget before the pass (issue 30): big maps are told, pooled or refused."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters._budget import (  # noqa: E402
    Budget,
    check_budget,
    layer_cost,
    plan_budget,
    pool,
)
from seis_sklearn.adapters._layout import Reading  # noqa: E402
from seis_sklearn.adapters.torch import layerwise_seis  # noqa: E402

from seis_sklearn import seis_score  # noqa: E402
from seis_sklearn.transforms import rot90  # noqa: E402


def test_a_112_map_is_pooled_before_it_exhausts_memory():
    """A 112×112 map of 64 channels (d = 12,544) at 256 samples: its statistics alone
    are ~15 GiB; under an 8 GiB budget it is pooled 2×2 (d = 3,136), and the numbers
    say why. A 7×7 map passes as it is."""
    shapes = {"stem": (64, 112, 112), "late": (512, 7, 7)}
    readings = {k: Reading("NCHW", 0, "grid") for k in shapes}
    budget = Budget(memory=8 * 2**30, seconds=float("inf"))
    cost = layer_cost(shapes["stem"], "NCHW", "spatial", 256, 2, rate=1e10)
    assert cost.d == 112 * 112 and cost.memory > 8 * 2**30
    planned, notes = plan_budget(shapes, readings, {"matricization": "auto"}, 256, 2, budget,
                                 "pool")  # fmt: skip
    assert planned["stem"].pool == 2 and planned["late"].pool == 1
    assert "pooled 2×2: d=12,544" in planned["stem"].remedy and "d=3,136" in planned["stem"].remedy
    assert len(notes) == 1 and notes[0].startswith("layer 'stem': pooled 2×2")
    skipped, _ = plan_budget(shapes, readings, {}, 256, 2, budget, "skip")
    assert skipped["stem"].skip.startswith("not scored: d=12,544")
    with pytest.raises(ValueError, match=r"1 layer\(s\) beyond the budget 8.0 GiB.*'stem'"):
        plan_budget(shapes, readings, {}, 256, 2, budget, "error")
    tokens = {"blocks": (12544, 64)}  # tokens cannot be pooled: not scored, with the numbers
    planned, _ = plan_budget(tokens, {"blocks": Reading("NLD")}, {}, 256, 2,
                             Budget(2**20, float("inf")), "pool")  # fmt: skip
    assert planned["blocks"].skip and "no pooling of its map fits" in planned["blocks"].skip


def test_budget_argument():
    assert check_budget(None) is None
    auto = check_budget("auto")
    assert auto.memory > 0 and auto.seconds == 15 * 60
    assert check_budget({"seconds": 60}).seconds == 60
    with pytest.raises(ValueError, match="budget must be 'auto', None or a dict"):
        check_budget("huge")
    with pytest.raises(ValueError, match="must be positive"):
        check_budget({"memory": 0})


class Wide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_a_pooled_layer_scores_its_pooled_map():
    """A layer over the budget is pooled in the pass: its row equals seis_score of the
    pooled activations, and says so; rot90 commutes with the pooling (the identity of
    a rotation-equivariant pooled map is exact)."""
    from seis_sklearn.adapters.torch import extract_activations
    from seis_sklearn.adapters.torch import transforms as TT

    x = np.random.default_rng(0).normal(size=(48, 3, 16, 16)).astype(np.float32)
    model = Wide().eval()
    small = {"memory": 2.5 * 2**20}  # the 16×16 map's statistics do not fit; 8×8 do
    with pytest.warns(UserWarning, match="layer 'conv': pooled 2×2"):
        frame = layerwise_seis(model, x, {"rot90": TT.rot90}, layers=["conv"], held_out=None,
                               progress=False, budget=small)  # fmt: skip
    row = frame.iloc[0]
    assert row["remedy"].startswith("pooled 2×2") and row["shape"] == "4×8×8"  # as scored
    a, b = extract_activations(model, x, ["conv"], transform=TT.rot90, progress=False)["conv"]
    want = seis_score(pool(a, "NCHW", 2), pool(b, "NCHW", 2), cv=None)
    assert row["equivariance"] == pytest.approx(want.equivariance, abs=1e-9)
    a64 = a.astype(np.float64)  # the pooling commutes with quarter turns (to rounding)
    assert np.allclose(pool(rot90(a64), "NCHW", 2), rot90(pool(a64, "NCHW", 2)), atol=1e-12)
    with pytest.warns(UserWarning, match="pooled 2×2"):
        streamed = layerwise_seis(model, x, {"rot90": TT.rot90}, layers=["conv"],
                                  progress=False, budget=small)  # fmt: skip
    assert streamed["remedy"][0].startswith("pooled 2×2") and np.isfinite(
        streamed["equivariance"][0]
    )
    with pytest.warns(UserWarning, match="not scored"):
        skipped = layerwise_seis(model, x, {"rot90": TT.rot90}, layers=["conv", "head"],
                                 held_out=None, progress=False, budget=small,
                                 over_budget="skip")  # fmt: skip
    rows = skipped.set_index("layer")
    assert np.isnan(rows.loc["conv", "equivariance"]) and np.isfinite(
        rows.loc["head", "equivariance"]
    )
    calls = []
    model.conv.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(ValueError, match="beyond the budget"):
        layerwise_seis(model, x, {"rot90": TT.rot90}, layers=["conv"], progress=False,
                       budget=small, over_budget="error")  # fmt: skip
    assert len(calls) <= 1  # the two-sample probe only: refused before the pass


def test_cli_budget_options(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "nets.py").write_text(
        "from tests.test_budget import Wide\ndef wide(): return Wide()\n"
    )
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(48, 3, 16, 16)))
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{tmp_path}"}

    def run(*extra):
        return subprocess.run(
            [sys.executable, "-m", "seis_sklearn", "report", "--model", "nets.py:wide",
             "--inputs", "x.npy", "--transform", "rot90", "--layers", "conv", "--in-sample",
             "-q", "--memory-budget", str(2.5 / 1024), *extra],
            capture_output=True, text=True, cwd=tmp_path, env=env,
        )  # fmt: skip

    pooled = run("--out", "pooled")
    assert pooled.returncode == 0, pooled.stderr
    assert "layer 'conv': pooled 2×2" in pooled.stderr
    assert "pooled 2×2" in (tmp_path / "pooled" / "report.csv").read_text()
    refused = run("--out", "refused", "--over-budget", "error")
    assert refused.returncode == 1 and "beyond the budget" in refused.stderr
