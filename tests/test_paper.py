"""`seis paper`: small models trained here, tracked, scored and judged claim by claim."""

import csv

import numpy as np
import pytest

pytest.importorskip("torch")

from seis_sklearn.adapters.torch import paper  # noqa: E402

from seis_sklearn.cli import main  # noqa: E402

VERDICTS = {"reproduced", "not reproduced", "inconclusive"}


def test_a_short_paper_run_writes_every_claim_with_a_verdict(tmp_path, capsys):
    out = tmp_path / "paper"
    assert main(["paper", "--out", str(out), "--epochs", "2", "--images", "160", "--seeds", "2",
                 "-q"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    with open(out / "claims.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["claim"] for r in rows] == [claim for claim, _ in paper.CLAIMS.values()]
    assert {r["verdict"] for r in rows} <= VERDICTS and all(r["measured"] for r in rows)
    assert printed.count("| **") == len(paper.CLAIMS)  # the Markdown table, one row each
    for key in ("encoder", "stabilise", "decoder", "augmentation", "multitask", "architectures"):
        assert (out / f"claim_{key}.png").read_bytes()[:4] == b"\x89PNG"
    with open(out / "tracking.csv", newline="") as fh:
        tracked = list(csv.DictReader(fh))
    assert {r["epoch"] for r in tracked} == {"0", "1"}
    assert {r["model"] for r in tracked} == {"cnn", "cnn_aug", "unet", "multitask", "vit", "mixer"}
    with open(out / "scores.csv", newline="") as fh:
        scores = list(csv.DictReader(fh))
    values = np.array([[float(r[k]) for k in ("S_E", "S_I")] for r in scores])
    assert np.isfinite(values).all() and (values[:, 1] <= values[:, 0] + 1e-9).all()
    assert {r["seed"] for r in scores} == {"0", "1"}
    # two seeds are two trainings: their scores differ
    by_seed = {s: [float(r["S_E"]) for r in scores if r["seed"] == s] for s in ("0", "1")}
    assert by_seed["0"] != by_seed["1"]
    with open(out / "effects_by_seed.csv", newline="") as fh:
        effects = list(csv.DictReader(fh))
    assert {r["claim"] for r in effects} == set(paper.CLAIMS) and {r["seed"] for r in effects} == {
        "0", "1"}  # fmt: skip
    with open(out / "measures.csv", newline="") as fh:
        measures = list(csv.DictReader(fh))
    assert len(measures) == 2 * 5 and set(paper.MEASURES) <= set(measures[0])
    assert all(np.isfinite(float(r["cka_debiased"])) and float(r["lee"]) >= 0 for r in measures)
    with open(out / "measures_agreement.csv", newline="") as fh:
        agreement = list(csv.DictReader(fh))
    assert len(agreement) == len(paper.MEASURES) * (len(paper.MEASURES) - 1) // 2
    rho = [float(r["mean"]) for r in agreement if r["mean"]]
    assert rho and all(-1 <= v <= 1 for v in rho)
    assert (out / "measures.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["paper", "--out", str(out), "--epochs", "1"]) == 1  # finished: no overwrite
    assert "pass --force" in capsys.readouterr().err
    # issue 31: two tracked epochs cannot tell when the scores settle
    stabilise = next(r for r in rows if r["claim"] == paper.CLAIMS["stabilise"][0])
    assert stabilise["verdict"] == "inconclusive"
    assert "only 2 epochs tracked: at least 3 are needed" in stabilise["measured"]


def test_more_images_than_the_digits_hold_is_said():
    """--images 100000 trained on the 1,497 images there are without saying so."""
    said = []

    class Stop(Exception):
        pass

    def log(message):
        said.append(message)
        raise Stop  # the message is all this test needs

    with pytest.raises(Stop):
        paper.run("/nonexistent", epochs=1, n_train=100000, log=log)
    assert said == [
        "training on the 1,497 digits there are, not 100,000: scikit-learn's digits hold "
        "1,797 images, 300 of them the probe set"
    ]


def test_seed_rules_and_rank_agreement():
    """A claim is judged on the spread between seeds; Spearman's rho of two measures
    across layers is 1 for the same order and −1 for the reverse, whatever the scale."""
    import pandas as pd

    assert paper._effect_verdict([0.3, 0.35, 0.32], 0.0, 0.0, 0.5) == "reproduced"
    assert paper._effect_verdict([0.3, -0.2, 0.4], 0.0, 0.0, 0.01) == "inconclusive"
    assert paper._effect_verdict([-0.3, -0.31, -0.29], 0.0, 0.0, 0.5) == "not reproduced"
    assert paper._effect_verdict([0.3], 0.0, 0.0, 0.2) == "inconclusive"  # one seed: folds
    depth = np.arange(5)
    rows = []
    for seed in (0, 1):
        values = {m: depth * (seed + 1.0) for m in paper.MEASURES}
        values["lee"] = -np.exp(depth)  # the reverse order
        rows.append(pd.DataFrame({"layer": list("abcde"), "depth": depth, **values, "seed": seed}))
    agreement = paper.rank_agreement(pd.concat(rows))
    assert agreement.loc["equivariance ~ cka", "mean"] == pytest.approx(1.0, abs=1e-12)
    assert agreement.loc["cka ~ lee", "mean"] == pytest.approx(-1.0, abs=1e-12)
    assert agreement.loc["cka ~ lee", "std"] == pytest.approx(0.0, abs=1e-12)


def test_verdict_rules():
    assert paper._verdict(0.3, 0.05) == "reproduced"
    assert paper._verdict(-0.3, 0.05) == "not reproduced"
    assert paper._verdict(0.05, 0.05) == "inconclusive"  # inside twice the spread
    assert paper._both(["reproduced", "inconclusive"]) == "inconclusive"
    assert paper._both(["reproduced", "not reproduced"]) == "not reproduced"
    images, labels, masks = paper.digits_data()
    assert images.shape == (1797, 1, 16, 16) and set(np.unique(masks)) == {0, 1}
    assert labels.shape == (1797,) and masks.mean() > 0.1
