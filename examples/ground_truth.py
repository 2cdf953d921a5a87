"""Is my layer really equivariant? The ground-truth figure of the docs.

Usage: ``python examples/ground_truth.py [--out FILE.png]`` (about a minute; needs
torch and e2cnn). Uses the networks of ``tests/test_ground_truth.py`` — an exactly
C4-equivariant e2cnn network (regular fields) and an ordinary CNN of the same size,
on 500 digits padded to 9×9 — and prints, per layer, the cross-fitted S_E of the
orbit (flatten matricization, basis pooled over the four quarter turns), of the
rot90 pair alone in flatten and in spatial mode, and the latent-action defects.
Draws them into one figure.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from seis_sklearn import latent_action, seis_score  # noqa: E402


def measure():
    from sklearn.datasets import load_digits
    from test_ground_truth import C4Net, PlainNet, orbit_activations

    images = load_digits().images[:500].astype(np.float32) / 16.0
    x = np.pad(images, ((0, 0), (0, 1), (0, 1)))[:, None]
    layers = ["conv1", "conv2", "conv3"]
    rows = []
    for name, net in (("C4 G-CNN (e2cnn)", C4Net()), ("ordinary CNN", PlainNet())):
        acts = orbit_activations(net, x, layers)
        for layer in layers:
            A, *Bs = acts[layer]
            flat = dict(matricization="flatten", n_components=0.99)
            action = latent_action(A, Bs, **flat)
            rows.append(
                dict(
                    network=name,
                    layer=layer,
                    orbit_flatten=seis_score(A, Bs, cv=3, **flat).equivariance,
                    pair_flatten=seis_score(A, Bs[0], cv=3, **flat).equivariance,
                    pair_spatial=seis_score(
                        A, Bs[0], cv=3, matricization="spatial", n_components=0.99
                    ).equivariance,
                    homomorphism=action.homomorphism_defect,
                    order=action.order_defect,
                    orthogonality=action.orthogonality_defect,
                )
            )
    return rows


def figure(rows, path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    keys = [("orbit_flatten", "orbit, flatten"), ("pair_flatten", "pair, flatten"),
            ("pair_spatial", "pair, spatial")]  # fmt: skip
    for ax, network in zip(axes, dict.fromkeys(r["network"] for r in rows), strict=True):
        sel = [r for r in rows if r["network"] == network]
        x = np.arange(len(sel))
        for i, (key, label) in enumerate(keys):
            ax.bar(x + (i - 1) * 0.27, [r[key] for r in sel], 0.27, label=label)
        ax.set_xticks(x, [r["layer"] for r in sel])
        ax.set_title(network)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("held-out S_E (rot90)")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.savefig(path, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="ground_truth.png", help="figure file")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)  # e2cnn's deprecation notices
    rows = measure()
    head = f"{'network':<18}{'layer':<7}{'orbit':>8}{'pair':>8}{'spatial':>9}"
    print(head + f"{'homomorphism':>14}{'order':>10}{'orthogonality':>15}")
    for r in rows:
        print(
            f"{r['network']:<18}{r['layer']:<7}{r['orbit_flatten']:>8.4f}"
            f"{r['pair_flatten']:>8.4f}{r['pair_spatial']:>9.4f}{r['homomorphism']:>14.2e}"
            f"{r['order']:>10.2e}{r['orthogonality']:>15.2e}"
        )
    figure(rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
