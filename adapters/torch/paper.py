"""The SEIS paper's claims, checked on small models trained here: ``seis paper``.

On data shipped with scikit-learn (the 8×8 digits, upsampled to 16×16; segmentation
masks by thresholding the digits), trained on the CPU in a few minutes:

* a CNN encoder (four conv–BN–ReLU blocks, pooling after blocks 2 and 3, a linear
  head), plain and with random rotations;
* a U-Net for segmentation (the same encoder blocks 1–3, two decoder stages with
  skip connections);
* a multi-task model: the encoder with both heads (classification and the decoder);
* a ViT and an MLP-Mixer of comparable size (4×4 patches, four blocks).

Every model is tracked during training (:class:`~seis_sklearn.adapters.torch.SEISMonitor`
on a fixed probe set) and scored at the end, layer by layer, 5-fold cross-fitted
(mean ± std over folds), under a 90° rotation and a 2-px shift of the inputs. Each
claim of the paper (seed ``000`` of the project) becomes one row — what we
measured and a verdict decided by a rule written down beforehand (:data:`CLAIMS`):
*reproduced*, *not reproduced* or *inconclusive* (differences inside twice the
folds' spread). The verdicts are whatever the data say.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path

import numpy as np

from seis_sklearn._files import atomic_write

from . import _import_torch, extract_activations
from . import transforms as TT
from ._monitor import SEISMonitor

TRANSFORMS = {"rot90": partial(TT.rot90, k=1), "shift 2px": partial(TT.translate, shift=(0, 2))}
ENCODER = ["block1", "block2", "block3", "block4"]

#: The claims and the rules that decide them (margins are twice the folds' spread).
CLAIMS = OrderedDict(
    encoder=(
        "CNN encoders go from equivariant early layers to invariant later ones",
        "plain CNN, under each transform: S_I rises from block 1 to the pooled features and "
        "block 1 is more equivariant than invariant; reproduced if so under both transforms, "
        "not reproduced if under neither",
    ),
    stabilise=(
        "both properties stabilise within the first few training epochs",
        "every tracked score of the plain CNN stays within 0.05 of its final value from "
        "epoch E on; reproduced when E is at most a third of the epochs",
    ),
    decoder=(
        "in segmentation decoders equivariance recovers in later layers",
        "rot90, U-Net: S_E of the last decoder stage above S_E of the bottleneck",
    ),
    augmentation=(
        "data augmentation increases equivariance and invariance at once",
        "rot90, augmented vs plain CNN, mean over the encoder blocks: both S_E and S_I higher",
    ),
    multitask=(
        "multi-task learning gives higher scores in both properties than either task alone",
        "rot90, mean over encoder blocks 1-3: S_E and S_I of the multi-task encoder above "
        "both single-task encoders (classifier, U-Net)",
    ),
    architectures=(
        "transformers behave differently from CNNs; MLP-Mixers lie in between",
        "rot90, S_E and S_I by block: ViT and CNN differ by more than 0.1 on average, and the "
        "Mixer lies between them at two thirds of the points or more",
    ),
)


# ---------------------------------------------------------------------------- data


def digits_data(size=16, seed=0):
    """Digits (N, 1, size, size) in [0, 1], labels, foreground masks; a fixed split."""
    from scipy import ndimage
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float64) / 16.0
    images = ndimage.zoom(images, (1, size / 8, size / 8), order=1, grid_mode=True, mode="nearest")
    images = np.clip(images, 0.0, 1.0)[:, None].astype(np.float32)
    masks = (images[:, 0] > 0.35).astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order], digits.target[order].astype(np.int64), masks[order]


# -------------------------------------------------------------------------- models


def _block(cin, cout, pool):
    nn = _import_torch().nn
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*layers, *([nn.MaxPool2d(2)] if pool else []))


def _encoder():
    return OrderedDict(
        block1=_block(1, 16, False), block2=_block(16, 32, True), block3=_block(32, 48, True)
    )


class _Net:
    """Factories of the paper's models (built lazily: torch is imported on use)."""

    @staticmethod
    def cnn():
        nn = _import_torch().nn
        return nn.Sequential(
            OrderedDict(
                **_encoder(), block4=_block(48, 64, False), pool=nn.AdaptiveAvgPool2d(1),
                flat=nn.Flatten(), head=nn.Linear(64, 10),
            )
        )  # fmt: skip

    @staticmethod
    def unet(classify=False):
        torch = _import_torch()
        nn = torch.nn

        class UNet(nn.Module):
            def __init__(self):
                super().__init__()
                for name, block in _encoder().items():
                    setattr(self, name, block)
                self.up1 = nn.ConvTranspose2d(48, 32, 2, 2)
                self.dec1 = _block(64, 32, False)
                self.up2 = nn.ConvTranspose2d(32, 16, 2, 2)
                self.dec2 = _block(32, 16, False)
                self.seg = nn.Conv2d(16, 2, 1)
                if classify:
                    self.head = nn.Sequential(
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10)
                    )

            def forward(self, x):
                a = self.block1(x)
                b = self.block2(a)  # pooled: 8×8
                c = self.block3(b)  # 4×4
                d = self.dec1(torch.cat([self.up1(c), b], 1))
                seg = self.seg(self.dec2(torch.cat([self.up2(d), a], 1)))
                return (self.head(c), seg) if classify else seg

        return UNet()

    @staticmethod
    def vit(dim=48, depth=4, heads=3):
        torch = _import_torch()
        nn = torch.nn

        class ViT(nn.Module):
            num_prefix_tokens = 1

            def __init__(self):
                super().__init__()
                self.patch_embed = nn.Conv2d(1, dim, 4, 4)
                self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
                self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 17, dim))
                layer = partial(nn.TransformerEncoderLayer, dim, heads, 2 * dim, dropout=0.0,
                                batch_first=True, norm_first=True)  # fmt: skip
                self.blocks = nn.Sequential(*(layer() for _ in range(depth)))
                self.norm = nn.LayerNorm(dim)
                self.head = nn.Linear(dim, 10)

            def forward(self, x):
                t = self.patch_embed(x).flatten(2).transpose(1, 2)
                t = torch.cat([self.cls_token.expand(len(x), -1, -1), t], 1) + self.pos_embed
                return self.head(self.norm(self.blocks(t))[:, 0])

        return ViT()

    @staticmethod
    def mixer(dim=48, depth=4):
        torch = _import_torch()
        nn = torch.nn

        def mlp(width, hidden):
            return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

        class MixerBlock(nn.Module):
            def __init__(self):
                super().__init__()
                self.norm1, self.tokens = nn.LayerNorm(dim), mlp(16, 32)
                self.norm2, self.channels = nn.LayerNorm(dim), mlp(dim, 2 * dim)

            def forward(self, x):
                x = x + self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
                return x + self.channels(self.norm2(x))

        class Mixer(nn.Module):
            num_prefix_tokens = 0

            def __init__(self):
                super().__init__()
                self.stem = nn.Conv2d(1, dim, 4, 4)
                self.blocks = nn.Sequential(*(MixerBlock() for _ in range(depth)))
                self.head = nn.Linear(dim, 10)

            def forward(self, x):
                return self.head(self.blocks(self.stem(x).flatten(2).transpose(1, 2)).mean(1))

        return Mixer()


# ------------------------------------------------------------------------ training


def _rotated(batch, generator):
    from .demo import random_rotations

    return random_rotations(batch, generator)


def train(model, data, *, task, epochs, augment=False, monitor=None, seed=0, batch_size=64):
    """Adam; ``task`` "classify", "segment" or "both"; the monitor updated every epoch."""
    torch = _import_torch()
    F = torch.nn.functional
    images, labels, masks = (torch.from_numpy(a) for a in data)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), batch_size):
            idx = order[i : i + batch_size]
            x = images[idx]
            if augment:
                x = _rotated(x, generator)
            out = model(x)
            if task == "classify":
                loss = F.cross_entropy(out, labels[idx])
            elif task == "segment":
                loss = F.cross_entropy(out, masks[idx])
            else:
                loss = F.cross_entropy(out[0], labels[idx]) + F.cross_entropy(out[1], masks[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if monitor is not None:
            monitor.update(model, epoch)
    model.eval()
    return model


def cross_fitted(model, images, layers, transform, folds=5):
    """Layer → (S_E mean, S_E std, S_I mean, S_I std), cross-fitted over ``folds``."""
    from seis_sklearn import seis_score

    pairs = extract_activations(model, images, layers, transform=transform, progress=False,
                                batch_size=256)  # fmt: skip
    out = {}
    for layer, (a, b) in pairs.items():
        if a.ndim == 3 and getattr(model, "num_prefix_tokens", 0):
            a, b = a[:, model.num_prefix_tokens :], b[:, model.num_prefix_tokens :]
        r = seis_score(a, b, cv=folds)
        out[layer] = (r.equivariance, r.equivariance_std, r.invariance, r.invariance_std)
    return out


# ------------------------------------------------------------------------- verdicts


def _verdict(difference, spread, expected_sign=1):
    """Reproduced if the difference has the claimed sign beyond twice the spread."""
    if expected_sign * difference > 2 * spread:
        return "reproduced"
    if expected_sign * difference < -2 * spread:
        return "not reproduced"
    return "inconclusive"


def _both(verdicts):
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if any(v == "not reproduced" for v in verdicts):
        return "not reproduced"
    return "inconclusive"


def _pm(value, spread):
    return f"{value:.2f}±{spread:.2f}"


def _mean(scores, layers, index):
    values = np.array([scores[layer][index] for layer in layers])
    spreads = np.array([scores[layer][index + 1] for layer in layers])
    return float(values.mean()), float(np.sqrt((spreads**2).mean() / len(layers)))


# The stabilisation claim needs this many tracked epochs: settling "within the first
# third" of fewer cannot be told from never moving.
MIN_TRACKED_EPOCHS = 3


def effects(results, epochs):
    """Every claim's effects on one trained set of models (one seed).

    Returns
    -------
    dict
        Claim key → list of ``(label, value, fold_spread, high, low)``: the effect is
        in the claimed direction beyond ``high`` and against it below ``low``
        (:func:`judge_seeds`); ``fold_spread`` is its spread over the probe folds.
    """
    out = {}
    encoder = []
    for name in TRANSFORMS:
        first, last = results["cnn"][name]["block1"], results["cnn"][name]["pool"]
        encoder.append((f"{name}: S_I pooled − block 1", last[2] - first[2],
                        np.hypot(last[3], first[3]), 0.0, 0.0))  # fmt: skip
        encoder.append((f"{name}: S_E − S_I block 1", first[0] - first[2],
                        np.hypot(first[1], first[3]), 0.0, 0.0))  # fmt: skip
    out["encoder"] = encoder
    track = results["cnn_tracking"]
    final = track[track["epoch"] == track["epoch"].max()].set_index(["layer", "transform"])
    settled = 0
    for (layer, name), group in track.groupby(["layer", "transform"]):
        for score in ("equivariance", "invariance"):
            end = final.loc[(layer, name), score]
            far = group[np.abs(group[score] - end) > 0.05]["epoch"]
            settled = max(settled, int(far.max()) + 1 if len(far) else 0)
    # −(the epoch from which every score stays within 0.05 of its final value):
    # reproduced at most a third of the epochs in, not reproduced after half of them
    out["stabilise"] = [("−epoch every score settles", -float(settled), 0.0,
                         -(epochs // 3) - 0.5, -(epochs // 2) - 0.5)]  # fmt: skip
    unet = results["unet"]["rot90"]
    bottom, top = unet["block3"], unet["dec2"]
    out["decoder"] = [("S_E last decoder stage − bottleneck", top[0] - bottom[0],
                       np.hypot(top[1], bottom[1]), 0.0, 0.0)]  # fmt: skip
    cnn, aug = results["cnn"]["rot90"], results["cnn_aug"]["rot90"]
    out["augmentation"] = []
    for index, label in ((0, "S_E"), (2, "S_I")):
        plain, plain_s = _mean(cnn, ENCODER, index)
        augmented, aug_s = _mean(aug, ENCODER, index)
        out["augmentation"].append((f"mean {label} augmented − plain", augmented - plain,
                                    np.hypot(aug_s, plain_s), 0.0, 0.0))  # fmt: skip
    shared = ENCODER[:3]
    out["multitask"] = []
    for index, label in ((0, "S_E"), (2, "S_I")):
        m, ms = _mean(results["multitask"]["rot90"], shared, index)
        best, best_s = max(_mean(results[k]["rot90"], shared, index) for k in ("cnn", "unet"))
        out["multitask"].append((f"mean {label} multi-task − best single task", m - best,
                                 np.hypot(ms, best_s), 0.0, 0.0))  # fmt: skip
    profiles = {}
    for name, blocks in (("cnn", ENCODER), ("vit", [f"blocks.{i}" for i in range(4)]),
                         ("mixer", [f"blocks.{i}" for i in range(4)])):  # fmt: skip
        scores = results[name]["rot90"]
        profiles[name] = np.array([[scores[b][0], scores[b][2]] for b in blocks])
    gap = float(np.abs(profiles["vit"] - profiles["cnn"]).mean())
    low = np.minimum(profiles["vit"], profiles["cnn"])
    high = np.maximum(profiles["vit"], profiles["cnn"])
    mixer = profiles["mixer"]
    between = float(((mixer >= low - 0.02) & (mixer <= high + 0.02)).mean())
    out["architectures"] = [
        ("mean |ViT − CNN| over S_E, S_I by block", gap, 0.0, 0.1, 0.05),
        ("share of points with the Mixer between them", between, 0.0, 2 / 3 - 1e-9, 1 / 3),
    ]
    return out


def _effect_verdict(values, high, low, fold_spread):
    """Reproduced when the mean over the seeds less twice their spread is above
    ``high``; not reproduced when the mean plus twice the spread is below ``low``. The
    spread is the seeds' standard deviation (one seed: the folds' spread)."""
    values = np.asarray(values, dtype=float)
    spread = float(values.std(ddof=1)) if len(values) > 1 else float(fold_spread)
    mean = float(values.mean())
    if mean - 2 * spread > high:
        return "reproduced"
    if mean + 2 * spread < low:
        return "not reproduced"
    return "inconclusive"


def judge_seeds(per_seed, epochs, tracked_epochs):
    """The claims table from the effects of every seed (:func:`effects`): claim, rule,
    measured (mean ± spread between seeds, the folds' spread beside it) and verdict."""
    rows = []
    for key in CLAIMS:
        labels = [e[0] for e in per_seed[0][key]]
        verdicts, measured = [], []
        for i, label in enumerate(labels):
            values = [seed[key][i][1] for seed in per_seed]
            folds = float(np.mean([seed[key][i][2] for seed in per_seed]))
            _, _, _, high, low = per_seed[0][key][i]
            verdicts.append(_effect_verdict(values, high, low, folds))
            spread = np.std(values, ddof=1) if len(values) > 1 else float("nan")
            text = f"{label} {np.mean(values):+.2f} ± {spread:.2f}"
            measured.append(text + (f" (folds ±{folds:.2f})" if folds else ""))
        if key == "encoder":  # under each transform both effects; the claim under both
            per_transform = [_both(verdicts[i : i + 2]) for i in range(0, len(verdicts), 2)]
            verdict = (
                "reproduced" if all(v == "reproduced" for v in per_transform)
                else "not reproduced" if all(v == "not reproduced" for v in per_transform)
                else "inconclusive"
            )  # fmt: skip
        else:
            verdict = _both(verdicts)
        if key == "stabilise" and tracked_epochs < MIN_TRACKED_EPOCHS:
            verdict = "inconclusive"
            measured = [
                f"only {tracked_epochs} epoch{'s' if tracked_epochs != 1 else ''} tracked: at "
                f"least {MIN_TRACKED_EPOCHS} are needed to tell when the scores settle (--epochs)"
            ]
        rows.append({"claim": CLAIMS[key][0], "rule": CLAIMS[key][1] + SEED_RULE,
                     "measured": "; ".join(measured), "verdict": verdict, "key": key})  # fmt: skip
    return rows


#: How every rule weighs the seeds (appended to each claim's rule).
SEED_RULE = (
    "; each effect judged over the seeds: reproduced when its mean less twice its "
    "standard deviation between seeds is past the threshold, not reproduced when its "
    "mean plus twice that deviation falls short of the opposite one"
)


# ----------------------------------------------------------------------------- run


#: The training seeds of ``seis paper``: every model is trained once per seed.
SEEDS = (0, 1, 2, 3, 4)

#: The measures put side by side on the plain CNN's layers (columns of the report).
MEASURES = ("equivariance", "invariance", "cka", "cka_debiased", "channel_eed", "lee")


def run(out, *, epochs=6, n_train=1000, n_probe=300, seeds=SEEDS, log=print):
    """Train every model once per seed, track and score them, judge the claims on the
    spread between seeds, compare the measures; write the files.

    Returns
    -------
    pandas.DataFrame
        The claims table (claim, rule, measured, verdict).
    """
    import pandas as pd

    images, labels, masks = digits_data()
    available = len(images) - n_probe
    if n_train > available:
        log(f"training on the {available:,} digits there are, not {n_train:,}: scikit-learn's "
            f"digits hold {len(images):,} images, {n_probe} of them the probe set")  # fmt: skip
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: train with at least one")
    probe = images[:n_probe]
    fit = (images[n_probe : n_probe + n_train], labels[n_probe : n_probe + n_train],
           masks[n_probe : n_probe + n_train])  # fmt: skip
    per_seed, scores, tracking, measures = [], [], [], []
    for seed in seeds:
        results, tracked, cnn = _train_all(probe, fit, epochs, seed, log)
        per_seed.append(effects(results, epochs))
        scores += [
            dict(seed=seed, model=m, transform=t, layer=layer, S_E=v[0], S_E_std=v[1], S_I=v[2],
                 S_I_std=v[3])
            for m, per in results.items() if m != "cnn_tracking"
            for t, layers in per.items() for layer, v in layers.items()
        ]  # fmt: skip
        tracking.append(tracked.assign(seed=seed))
        measures.append(_measures(cnn, probe).assign(seed=seed))
    tracked = pd.concat(tracking, ignore_index=True)
    epochs_tracked = int(tracked["epoch"].nunique())
    table = pd.DataFrame(judge_seeds(per_seed, epochs, epochs_tracked))
    by_seed = pd.DataFrame(
        [dict(seed=seed, claim=key, effect=e[0], value=e[1], fold_spread=e[2])
         for seed, found in zip(seeds, per_seed, strict=True)
         for key, listed in found.items() for e in listed]
    )  # fmt: skip
    scores = pd.DataFrame(scores)
    measures = pd.concat(measures, ignore_index=True)
    agreement = rank_agreement(measures)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "claims.csv": table.drop(columns="key").to_csv(index=False),
        "claims.md": format_claims(table),
        "effects_by_seed.csv": by_seed.to_csv(index=False, float_format="%.4f"),
        "scores.csv": scores.to_csv(index=False, float_format="%.4f"),
        "tracking.csv": tracked.to_csv(index=False, float_format="%.4f"),
        "measures.csv": measures.to_csv(index=False, float_format="%.6g"),
        "measures_agreement.csv": agreement.to_csv(float_format="%.3f"),
    }
    for name, text in files.items():
        atomic_write(folder / name, text.encode())
    mean_scores = scores.groupby(["model", "transform", "layer"], sort=False, as_index=False)[
        ["S_E", "S_E_std", "S_I", "S_I_std"]].mean()  # fmt: skip
    for key, png in _figures(mean_scores, tracked[tracked["seed"] == seeds[0]]).items():
        atomic_write(folder / f"{key}.png", png)
    atomic_write(folder / "measures.png", _measures_figure(measures))
    return table


def _train_all(probe, fit, epochs, seed, log):
    """Every model trained with one seed: (scores, the plain CNN's tracking, the CNN)."""
    import pandas as pd

    torch = _import_torch()
    plans = {
        "cnn": (_Net.cnn, "classify", False, [*ENCODER, "pool"]),
        "cnn_aug": (_Net.cnn, "classify", True, [*ENCODER, "pool"]),
        "unet": (partial(_Net.unet, False), "segment", False, [*ENCODER[:3], "dec1", "dec2"]),
        "multitask": (partial(_Net.unet, True), "both", False, [*ENCODER[:3], "dec1", "dec2"]),
        "vit": (_Net.vit, "classify", False, [f"blocks.{i}" for i in range(4)]),
        "mixer": (_Net.mixer, "classify", False, [f"blocks.{i}" for i in range(4)]),
    }
    results, tracking, cnn = {}, [], None
    for name, (build, task, augment, layers) in plans.items():
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = build()
        tokens = "patch" if getattr(model, "num_prefix_tokens", 0) else "all"
        monitor = SEISMonitor(probe, TRANSFORMS, layers=layers, batch_size=300, tokens=tokens,
                              device="cpu")  # fmt: skip
        train(model, fit, task=task, epochs=epochs, augment=augment, monitor=monitor, seed=seed)
        tracking.append(monitor.frame.assign(model=name))
        results[name] = {t: cross_fitted(model, probe, layers, f) for t, f in TRANSFORMS.items()}
        if name == "cnn":
            results["cnn_tracking"], cnn = monitor.frame, model
        log(f"seed {seed}, {name}: trained {epochs} epochs, tracked and scored in "
            f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    return results, pd.concat(tracking, ignore_index=True), cnn


def _measures(model, probe):
    """The plain CNN's layers under rot90, every measure a column (one row per layer)."""
    from . import layerwise_seis

    frame = layerwise_seis(
        model, probe, {"rot90": TRANSFORMS["rot90"]}, layers=[*ENCODER, "pool"], held_out=None,
        progress=False, metrics=["cka", "cka_debiased", "channel_eed", "lee"],
    )  # fmt: skip
    return frame[["layer", "depth", *MEASURES]]


def rank_agreement(measures):
    """Spearman's rank correlation between every two measures across the layers, per
    seed; the mean over seeds and its spread (``"mean"``, ``"std"`` column levels).
    A pair is compared on the layers where both are defined (at least three)."""
    import pandas as pd
    from scipy.stats import spearmanr

    pairs = {}
    for _, part in measures.groupby("seed"):
        for i, a in enumerate(MEASURES):
            for b in MEASURES[i + 1 :]:
                both = part[[a, b]].dropna()
                varied = len(both) >= 3 and both[a].nunique() > 1 and both[b].nunique() > 1
                rho = spearmanr(both[a], both[b]).statistic if varied else np.nan
                pairs.setdefault((a, b), []).append(rho)
    rows = {
        f"{a} ~ {b}": {
            "mean": np.nanmean(v) if np.isfinite(v).any() else np.nan,
            "std": np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else np.nan,
            "seeds": int(np.isfinite(v).sum()),
        }  # fmt: skip
        for (a, b), v in ((k, np.asarray(v, dtype=float)) for k, v in pairs.items())
    }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "pair"
    return frame


def format_claims(table):
    """The claims table as Markdown."""
    lines = ["| claim | measured (mean ± standard deviation between training seeds; the "
             "5 probe folds' spread in brackets) | verdict |",
             "| --- | --- | --- |"]  # fmt: skip
    for _, row in table.iterrows():
        lines.append(f"| {row['claim']} | {row['measured']} | **{row['verdict']}** |")
    return "\n".join(lines) + "\n"


def _figures(scores, tracked):
    """One figure per claim: the scores it rests on."""
    from matplotlib.figure import Figure

    def png(fig):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    def by_layer(ax, model, title):
        part = scores[(scores["model"] == model) & (scores["transform"] == "rot90")]
        x = np.arange(len(part))
        ax.errorbar(x, part.S_E, part.S_E_std, fmt="-o", ms=4, label="S_E", capsize=2)
        ax.errorbar(x, part.S_I, part.S_I_std, fmt="--s", ms=4, label="S_I", capsize=2)
        ax.set_xticks(x, part.layer, rotation=30, fontsize=8)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    out = {}
    for key, models in (("claim_encoder", ["cnn"]), ("claim_decoder", ["unet"]),
                        ("claim_augmentation", ["cnn", "cnn_aug"]),
                        ("claim_multitask", ["cnn", "unet", "multitask"]),
                        ("claim_architectures", ["cnn", "vit", "mixer"])):  # fmt: skip
        fig = Figure(figsize=(3.6 * len(models), 3.2), layout="constrained")
        for ax, model in zip(fig.subplots(1, len(models), squeeze=False)[0], models, strict=True):
            by_layer(ax, model, f"{model}, rot90 (mean over seeds)")
        out[key] = png(fig)
    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    part = tracked[(tracked["model"] == "cnn") & (tracked["transform"] == "rot90")]
    for ax, score in zip(axes, ("equivariance", "invariance"), strict=True):
        for layer, rows in part.groupby("layer", sort=False):
            ax.plot(rows.epoch, rows[score], "-o", ms=3, label=layer)
        ax.set_title(f"plain CNN, rot90: {score} by epoch (first seed)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    out["claim_stabilise"] = png(fig)
    return out


def _measures_figure(measures):
    """Every measure against depth on the plain CNN under rot90: mean over seeds ± their
    spread, one panel per measure (their scales differ)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 2.8), layout="constrained")
    axes = fig.subplots(1, len(MEASURES))
    from seis_sklearn.report import MEASURE_TITLES

    stats = measures.drop(columns=["layer", "seed"]).groupby("depth").agg(["mean", "std"])
    layers = measures.drop_duplicates("depth").sort_values("depth")["layer"]
    for ax, name in zip(axes, MEASURES, strict=True):
        ax.errorbar(stats.index, stats[(name, "mean")], stats[(name, "std")], fmt="-o", ms=3,
                    capsize=2)  # fmt: skip
        ax.set_xticks(stats.index, layers, rotation=40, fontsize=7)
        ax.set_title(MEASURE_TITLES[name], fontsize=9)
        ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
