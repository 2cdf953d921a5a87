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


def judge(results, epochs):
    """The claims table: claim, rule, measured, verdict (one dict per claim)."""
    rows = []
    verdicts, measured = [], []
    for name in TRANSFORMS:
        first, last = results["cnn"][name]["block1"], results["cnn"][name]["pool"]
        rise = _verdict(last[2] - first[2], np.hypot(last[3], first[3]))
        early = _verdict(first[0] - first[2], np.hypot(first[1], first[3]))
        verdicts.append(_both([rise, early]))
        measured.append(
            f"{name}: S_E/S_I block 1 {_pm(first[0], first[1])} / {_pm(first[2], first[3])}, "
            f"pooled {_pm(last[0], last[1])} / {_pm(last[2], last[3])}"
        )
    if all(v == "reproduced" for v in verdicts):
        encoder = "reproduced"
    elif all(v == "not reproduced" for v in verdicts):
        encoder = "not reproduced"
    else:
        encoder = "inconclusive"
    rows.append(("encoder", encoder, "; ".join(measured)))
    cnn = results["cnn"]["rot90"]
    track = results["cnn_tracking"]
    final = track[track["epoch"] == track["epoch"].max()].set_index(["layer", "transform"])
    settled = 0
    for (layer, name), group in track.groupby(["layer", "transform"]):
        for score in ("equivariance", "invariance"):
            end = final.loc[(layer, name), score]
            far = group[np.abs(group[score] - end) > 0.05]["epoch"]
            settled = max(settled, int(far.max()) + 1 if len(far) else 0)
    tracked = int(track["epoch"].nunique())
    if tracked < MIN_TRACKED_EPOCHS:  # "the first few" of one or two epochs says nothing
        verdict = "inconclusive"
        stable = (
            f"only {tracked} epoch{'s' if tracked != 1 else ''} tracked: at least "
            f"{MIN_TRACKED_EPOCHS} are needed to tell when the scores settle (--epochs)"
        )
    else:
        verdict = "reproduced" if settled <= epochs // 3 else (
            "not reproduced" if settled > epochs // 2 else "inconclusive")  # fmt: skip
        stable = f"every score within 0.05 of its final value from epoch {settled} of {epochs}"
    rows.append(("stabilise", verdict, stable))
    unet = results["unet"]["rot90"]
    bottom, top = unet["block3"], unet["dec2"]
    rows.append(("decoder", _verdict(top[0] - bottom[0], np.hypot(top[1], bottom[1])),
                 f"S_E bottleneck (block 3) {bottom[0]:.2f}±{bottom[1]:.2f}, last decoder stage "
                 f"{top[0]:.2f}±{top[1]:.2f}"))  # fmt: skip
    aug = results["cnn_aug"]["rot90"]
    (pe, pes), (ae, aes) = _mean(cnn, ENCODER, 0), _mean(aug, ENCODER, 0)
    (pi, pis), (ai, ais) = _mean(cnn, ENCODER, 2), _mean(aug, ENCODER, 2)
    both = _both([_verdict(ae - pe, np.hypot(aes, pes)), _verdict(ai - pi, np.hypot(ais, pis))])
    rows.append(("augmentation", both,
                 f"mean S_E plain {pe:.2f}, augmented {ae:.2f}; mean S_I plain {pi:.2f}, "
                 f"augmented {ai:.2f}"))  # fmt: skip
    shared = ENCODER[:3]
    multi = results["multitask"]["rot90"]
    measured, verdicts = [], []
    for index, label in ((0, "S_E"), (2, "S_I")):
        m, ms = _mean(multi, shared, index)
        singles = [_mean(results[k]["rot90"], shared, index) for k in ("cnn", "unet")]
        best, best_s = max(singles)
        verdicts.append(_verdict(m - best, np.hypot(ms, best_s)))
        measured.append(f"{label} multi-task {m:.2f}, classifier {singles[0][0]:.2f}, "
                        f"U-Net {singles[1][0]:.2f}")  # fmt: skip
    rows.append(("multitask", _both(verdicts), "; ".join(measured)))
    profiles = {}
    for name, blocks in (("cnn", ENCODER), ("vit", [f"blocks.{i}" for i in range(4)]),
                         ("mixer", [f"blocks.{i}" for i in range(4)])):  # fmt: skip
        scores = results[name]["rot90"]
        profiles[name] = np.array([[scores[b][0], scores[b][2]] for b in blocks])
    gap = float(np.abs(profiles["vit"] - profiles["cnn"]).mean())
    low, high = (
        np.minimum(profiles["vit"], profiles["cnn"]),
        np.maximum(profiles["vit"], profiles["cnn"]),
    )
    between = float(
        ((profiles["mixer"] >= low - 0.02) & (profiles["mixer"] <= high + 0.02)).mean()
    )
    if gap > 0.1 and between >= 2 / 3:
        verdict = "reproduced"
    elif gap < 0.05 or between < 1 / 3:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    rows.append(("architectures", verdict,
                 f"mean |ViT − CNN| over S_E and S_I by block {gap:.2f}; Mixer between them at "
                 f"{between:.0%} of the points"))  # fmt: skip
    return [
        {"claim": CLAIMS[key][0], "rule": CLAIMS[key][1], "measured": measured_text,
         "verdict": verdict, "key": key}
        for key, verdict, measured_text in rows
    ]  # fmt: skip


# ----------------------------------------------------------------------------- run


def run(out, *, epochs=6, n_train=1000, n_probe=300, log=print):
    """Train every model, track and score them, judge the claims; write the files.

    Returns
    -------
    pandas.DataFrame
        The claims table (claim, rule, measured, verdict).
    """
    import pandas as pd

    torch = _import_torch()
    images, labels, masks = digits_data()
    available = len(images) - n_probe
    if n_train > available:
        log(f"training on the {available:,} digits there are, not {n_train:,}: scikit-learn's "
            f"digits hold {len(images):,} images, {n_probe} of them the probe set")  # fmt: skip
    probe = images[:n_probe]
    fit = (images[n_probe : n_probe + n_train], labels[n_probe : n_probe + n_train],
           masks[n_probe : n_probe + n_train])  # fmt: skip
    plans = {
        "cnn": (_Net.cnn, "classify", False, [*ENCODER, "pool"]),
        "cnn_aug": (_Net.cnn, "classify", True, [*ENCODER, "pool"]),
        "unet": (partial(_Net.unet, False), "segment", False, [*ENCODER[:3], "dec1", "dec2"]),
        "multitask": (partial(_Net.unet, True), "both", False, [*ENCODER[:3], "dec1", "dec2"]),
        "vit": (_Net.vit, "classify", False, [f"blocks.{i}" for i in range(4)]),
        "mixer": (_Net.mixer, "classify", False, [f"blocks.{i}" for i in range(4)]),
    }
    results, tracking = {}, []
    for name, (build, task, augment, layers) in plans.items():
        start = time.perf_counter()
        torch.manual_seed(0)
        model = build()
        tokens = "patch" if getattr(model, "num_prefix_tokens", 0) else "all"
        monitor = SEISMonitor(probe, TRANSFORMS, layers=layers, batch_size=300, tokens=tokens,
                              device="cpu")  # fmt: skip
        train(model, fit, task=task, epochs=epochs, augment=augment, monitor=monitor)
        tracking.append(monitor.frame.assign(model=name))
        results[name] = {t: cross_fitted(model, probe, layers, f) for t, f in TRANSFORMS.items()}
        if name == "cnn":
            results["cnn_tracking"] = monitor.frame
        log(f"{name}: trained {epochs} epochs, tracked and scored in "
            f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    table = pd.DataFrame(judge(results, epochs))
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "claims.csv", table.drop(columns="key").to_csv(index=False).encode())
    atomic_write(folder / "claims.md", format_claims(table).encode())
    scores = pd.DataFrame(
        [dict(model=m, transform=t, layer=layer, S_E=v[0], S_E_std=v[1], S_I=v[2], S_I_std=v[3])
         for m, per in results.items() if m != "cnn_tracking"
         for t, layers in per.items() for layer, v in layers.items()]
    )  # fmt: skip
    atomic_write(folder / "scores.csv", scores.to_csv(index=False, float_format="%.4f").encode())
    tracked = pd.concat(tracking, ignore_index=True)
    atomic_write(
        folder / "tracking.csv", tracked.to_csv(index=False, float_format="%.4f").encode()
    )
    for key, png in _figures(scores, tracked).items():
        atomic_write(folder / f"{key}.png", png)
    return table


def format_claims(table):
    """The claims table as Markdown."""
    lines = ["| claim | measured (5-fold cross-fitted mean±std) | verdict |",
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
            by_layer(ax, model, f"{model}, rot90 (cross-fitted)")
        out[key] = png(fig)
    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    part = tracked[(tracked["model"] == "cnn") & (tracked["transform"] == "rot90")]
    for ax, score in zip(axes, ("equivariance", "invariance"), strict=True):
        for layer, rows in part.groupby("layer", sort=False):
            ax.plot(rows.epoch, rows[score], "-o", ms=3, label=layer)
        ax.set_title(f"plain CNN, rot90: {score} by epoch", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    out["claim_stabilise"] = png(fig)
    return out
