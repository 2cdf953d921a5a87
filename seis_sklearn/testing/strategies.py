"""Hypothesis strategies for activation arrays, pairs and orbits (the project's own).

Needs the ``testing`` extra (``pip install 'seis-sklearn[testing]'``: hypothesis).
The project's property tests (docs/math.rst, section 6) draw from these same
strategies, so users can property-test their layers the same way. What each yields:

* ``activation_shapes`` → ``(layout, shape)``: small shapes of every layout;
* ``activation_arrays`` → ``(layout, A)``: correlated activations, float32/64;
* ``activation_pairs`` → ``(layout, A, B)``: B a noisy, moved, re-weighted copy;
* ``ill_conditioned_pairs`` → ``("NCHW", A, B)``: smooth fields, dead units, k near m;
* ``exact_pairs`` → ``(layout, name, A, B)``: B = ``exact_transforms(layout)[name](A)``;
* ``reencoded_pairs`` → ``("ND", A, B)``: B = A·M, M invertible;
* ``orbits`` → ``(layout, A, [B_1, …])``: a whole cyclic orbit of circular shifts;
* ``modes``, ``thresholds``: a matricization; an ``n_components`` float.

>>> from hypothesis import given, settings
>>> from seis_sklearn.testing import assert_equivariant
>>> from seis_sklearn.testing.strategies import exact_pairs, exact_transforms
>>> @settings(max_examples=5, deadline=None)
... @given(exact_pairs())
... def test_exact_transforms_keep_everything(case):
...     layout, name, A, B = case
...     g = exact_transforms(layout)[name]          # B is g(A)
...     assert_equivariant(lambda batch: batch, A, g, layout=layout)   # on g's orbit
>>> test_exact_transforms_keep_everything()
"""

from __future__ import annotations

import numpy as np

try:
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "seis_sklearn.testing.strategies needs hypothesis: pip install 'seis-sklearn[testing]'"
    ) from None

from .. import transforms

__all__ = [
    "LAYOUTS",
    "activation_arrays",
    "activation_pairs",
    "activation_shapes",
    "correlated",
    "exact_pairs",
    "exact_transforms",
    "ill_conditioned_pairs",
    "modes",
    "orbits",
    "reencoded_pairs",
    "thresholds",
]

LAYOUTS = ("NCHW", "NHWC", "NCDHW", "NLD", "ND")

#: Matricization modes.
modes = st.sampled_from(["spatial", "flatten", "channel"])
#: Variance thresholds worth testing.
thresholds = st.sampled_from([0.5, 0.9, 0.99, 1.0])


@st.composite
def activation_shapes(draw, layouts=LAYOUTS, min_samples=6, max_samples=30):
    """``(layout, shape)`` with small dimensions, for every layout."""
    layout = draw(st.sampled_from(layouts))
    n = draw(st.integers(min_samples, max_samples))
    c = draw(st.integers(1, 4))
    if layout == "ND":
        return layout, (n, draw(st.integers(2, 10)))
    if layout == "NLD":
        return layout, (n, draw(st.integers(2, 6)), c)
    h, w = draw(st.integers(2, 5)), draw(st.integers(2, 5))
    if layout == "NCHW":
        return layout, (n, c, h, w)
    if layout == "NHWC":
        return layout, (n, h, w, c)
    return layout, (n, c, draw(st.integers(1, 3)), h, w)


def correlated(rng, shape):
    """Gaussian activations with some correlation between neighbouring features."""
    A = rng.normal(size=shape)
    return A + 0.7 * np.roll(A, 1, axis=-1)


@st.composite
def activation_arrays(draw, layouts=LAYOUTS, min_samples=6, max_samples=30, dtypes=None):
    """``(layout, A)``: correlated activations of a drawn layout, shape and dtype."""
    layout, shape = draw(activation_shapes(layouts, min_samples, max_samples))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = draw(st.sampled_from(dtypes or [np.float64, np.float32]))
    return layout, correlated(rng, shape).astype(dtype)


@st.composite
def activation_pairs(draw, layouts=LAYOUTS, min_samples=6, max_samples=30):
    """``(layout, A, B)``: B a noisy, moved copy of A with random weight and sign
    (never constant: a view without variance has no score)."""
    layout, shape = draw(activation_shapes(layouts, min_samples, max_samples))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = correlated(rng, shape)
    kind = draw(st.sampled_from(["flip", "roll", "same", "independent"]))
    moved = {
        "flip": np.flip(A, axis=-1),
        "roll": np.roll(A, 1, axis=-1),
        "same": A,
        "independent": correlated(rng, shape),
    }[kind]
    # weights of at least 1e-2 and 1e-3 or none: B at a scale where its products
    # underflow (1e-215) has no variance to score, like B = 0 (never drawn)
    signal = draw(st.one_of(st.just(0.0), st.floats(0.01, 1.5))) * draw(st.sampled_from([-1, 1]))
    noise = draw(st.one_of(st.just(0.0), st.floats(1e-3, 1.0)))
    if signal == 0.0 and noise == 0.0:
        noise = 1.0
    B = signal * moved + noise * rng.normal(size=shape)
    return layout, A, B


def exact_transforms(layout):
    """Name → the exact transforms of a layout (quarter turns and flips of spatial
    layouts, a circular 1-px shift of every layout but ND): the transforms
    :func:`exact_pairs` draws from, to apply to other arrays of that layout."""
    spatial = {"NCHW", "NHWC", "NCDHW"}
    found = {}
    if layout in spatial:
        found["rot90"] = lambda a: transforms.rot90(a, layout=layout)
        found["rot180"] = lambda a: transforms.rot90(a, 2, layout=layout)
        found["hflip"] = lambda a: transforms.hflip(a, layout=layout)
        found["vflip"] = lambda a: transforms.vflip(a, layout=layout)
    if layout != "ND":
        found["shift1"] = lambda a: transforms.translate(a, 1, layout=layout)
    return found


@st.composite
def exact_pairs(draw, layouts=("NCHW", "NHWC", "NCDHW", "NLD"), min_samples=12, max_samples=30):
    """``(layout, name, A, B)``: B an exact transform of A (rot90 on square grids, flips,
    circular whole-pixel shifts) — permutations of A's entries."""
    layout, shape = draw(activation_shapes(layouts, min_samples, max_samples))
    if layout in ("NCHW", "NCDHW"):
        shape = (*shape[:-1], shape[-2])  # square planes, so quarter turns keep the shape
    elif layout == "NHWC":
        shape = (shape[0], shape[1], shape[1], shape[3])
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = correlated(rng, shape)
    name = draw(st.sampled_from(sorted(exact_transforms(layout))))
    return layout, name, A, np.ascontiguousarray(exact_transforms(layout)[name](A))


def _smooth(rng, shape, sigma):
    """Gaussian fields blurred over the last two axes (periodic), by FFT."""
    x = rng.normal(size=shape)
    h, w = shape[-2:]
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    gain = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    return np.fft.ifft2(np.fft.fft2(x) * gain).real


@st.composite
def ill_conditioned_pairs(draw, min_samples=6, max_samples=80):
    """``("NCHW", A, B)``: pairs whose second moments are badly conditioned, as real
    layers' are.

    One of

    * ``"smooth"`` — smooth fields (blur σ 1–2.5 px): A's variance falls by many
      orders of magnitude along its high frequencies, which only B's added noise
      fills (B = A shifted by a few pixels, plus noise);
    * ``"dead"`` — some channels of A, or of B, are zero (dead units);
    * ``"masked"`` — a fixed random set of A's features (channel, row, column) is
      zero on every sample, and B is A exactly shifted: dead units in both views,
      in places the shift does not keep (B may get a little noise on top);
    * ``"wide"`` — few samples against many features, so that the kept ``k`` comes
      close to the rows (in flatten mode) or the columns.
    """
    kind = draw(st.sampled_from(["smooth", "dead", "wide", "masked"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c = draw(st.integers(1, 6))
    size = draw(st.integers(3, 8))
    if kind == "wide":
        n = draw(st.integers(min_samples, max(min_samples, 12)))
    else:
        n = draw(st.integers(max(min_samples, 12), max_samples))
    shape = (n, c, size, size)
    A = _smooth(rng, shape, draw(st.floats(1.0, 2.5)))
    shift = draw(st.integers(0, size - 1))
    noise = draw(st.sampled_from([1e-3, 0.03, 0.3]))
    if kind == "masked":
        mask = rng.random(shape[1:]) < draw(st.floats(0.3, 0.9))
        mask.flat[0] = True  # some unit alive: a constant view has no score
        A *= mask
        noise = draw(st.sampled_from([0.0, 0.0, 1e-3]))
    B = np.roll(A, shift, axis=-1) + noise * A.std() * rng.normal(size=shape)
    if kind == "dead":
        dead = rng.random(c) < 0.5
        if dead.all():
            dead[0] = False
        if draw(st.booleans()):
            A[:, dead] = 0.0
        else:
            B[:, dead] = 0.0
    return "NCHW", A, B


@st.composite
def reencoded_pairs(draw, min_samples=20, max_samples=40, max_features=8):
    """``("ND", A, B)``: B = A·M for a random invertible M — a linear re-encoding that
    keeps everything (S_E = 1 without truncation) and moves it (S_I < 1)."""
    n = draw(st.integers(min_samples, max_samples))
    d = draw(st.integers(2, max_features))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = rng.normal(size=(n, d))
    M = rng.normal(size=(d, d)) + 2.0 * np.eye(d)  # well-conditioned
    return "ND", A, A @ M


@st.composite
def orbits(draw, max_order=4, min_samples=12, max_samples=30):
    """``(layout, A, [B_1, …])``: a cyclic orbit of circular shifts along the last
    spatial axis (NCHW), ``B_j`` = A shifted by ``j`` pixels, the group's order the
    grid width."""
    n = draw(st.integers(min_samples, max_samples))
    width = draw(st.integers(2, max_order))
    c, h = draw(st.integers(1, 3)), draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    A = correlated(rng, (n, c, h, width))
    return "NCHW", A, [np.roll(A, j, axis=3) for j in range(1, width)]
