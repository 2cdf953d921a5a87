"""SEIS next to the metrics from the literature, on the demo CNN (plain and augmented).

Usage: ``python examples/compare_metrics.py [--out DIR] [--epochs N]`` (about a
minute on 2 cores). Trains the two CNNs of ``seis demo`` (scikit-learn's digits),
then, on 400 test images and their quarter turns (the group C4), prints per layer:

* SEIS for rot90 (cross-fitted, 5 folds) with a permutation p-value (9
  permutations: the smallest possible p is 0.1) and a 95% bootstrap interval
  (20 resamples) for S_E;
* linear CKA, SVCCA and PWCCA between the activations on the original and on the
  rotated images (channel vectors matched by position for conv layers);
* channelwise C4-EED (the spatial action on every channel) for conv layers,
  latent C4-EED (Euclidean and cosine) of the pooled features and softmax C4-EED
  of the classifier.

Writes ``metrics.csv`` in ``--out``. The docs page "SEIS and the metrics from the
literature" quotes a run of it.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seis_sklearn.adapters.torch import extract_activations  # noqa: E402
from seis_sklearn.adapters.torch.demo import (  # noqa: E402
    accuracy,
    digits_images,
    make_cnn,
    train,
)

from seis_sklearn import seis_score, transforms  # noqa: E402
from seis_sklearn.metrics import (  # noqa: E402
    channelwise_geed,
    latent_geed,
    linear_cka,
    pwcca,
    softmax_geed,
    svcca,
)

LAYERS = ["block1", "block2", "block3", "block4", "flat", "head"]


def layer_rows(name, orbit_acts, layer):
    """Every metric for one layer; ``orbit_acts[k]`` = activations on rot90(x, k)."""
    A, B = (a.astype(np.float64) for a in orbit_acts[:2])
    conv = A.ndim == 4
    mode = "channel" if conv else "flatten"
    seis = seis_score(A, B, cv=5, n_permutations=9, n_bootstrap=20, random_state=0)
    row = {
        "model": name,
        "layer": layer,
        "S_E": seis.equivariance,
        "S_E_ci": f"[{seis.ci_low['equivariance']:.2f}, {seis.ci_high['equivariance']:.2f}]",
        "S_E_p": seis.p_values["equivariance"],
        "S_I": seis.invariance,
        "CKA": linear_cka(A, B, matricization=mode),
        "SVCCA": svcca(A, B, matricization=mode),
        "PWCCA": pwcca(A, B, matricization=mode),
        "channel_EED": np.nan,
        "latent_EED_l2": np.nan,
        "latent_EED_cos": np.nan,
        "softmax_EED": np.nan,
    }
    if conv:
        actions = [partial(transforms.rot90, k=k) for k in range(4)]
        row["channel_EED"] = channelwise_geed(orbit_acts, actions)
    if layer == "flat":
        row["latent_EED_l2"] = latent_geed(orbit_acts)
        row["latent_EED_cos"] = latent_geed(orbit_acts, metric="cosine")
    if layer == "head":
        row["softmax_EED"] = softmax_geed(orbit_acts, from_logits=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="metrics-output", help="output folder")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args(argv)
    import pandas as pd

    images, labels = digits_images()
    order = np.random.default_rng(0).permutation(len(images))
    test, fit = order[:600], order[600:]  # the demo's split; 400 test images scored
    test = test[:400]
    x = images[test]
    orbit_inputs = [np.ascontiguousarray(transforms.rot90(x, k)) for k in range(4)]
    rows = []
    for name, augment in (("plain", False), ("rotation-augmented", True)):
        model = make_cnn(seed=0)
        train(model, images[fit], labels[fit], augment=augment, epochs=args.epochs)
        print(f"{name}: test accuracy {accuracy(model, x, labels[test]):.3f}", file=sys.stderr)
        acts = [
            extract_activations(model, xk, LAYERS, progress=False, device="cpu")
            for xk in orbit_inputs
        ]
        for layer in LAYERS:
            rows.append(layer_rows(name, [a[layer] for a in acts], layer))
    table = pd.DataFrame(rows)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(args.out) / "metrics.csv", index=False, float_format="%.4f")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
