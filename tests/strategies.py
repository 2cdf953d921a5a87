"""Hypothesis strategies for activation arrays of every layout (used by the property tests)."""

import numpy as np
from hypothesis import strategies as st

LAYOUTS = ("NCHW", "NHWC", "NCDHW", "NLD", "ND")


@st.composite
def activation_shapes(draw, layouts=LAYOUTS, min_samples=6, max_samples=30):
    """(layout, shape) with small dimensions of every layout."""
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
def activation_pairs(draw, layouts=LAYOUTS, min_samples=6, max_samples=30):
    """(layout, A, B): B a noisy, re-encoded copy of A with random weights and signs."""
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
    signal = draw(st.floats(-1.5, 1.5))
    noise = draw(st.floats(0.0, 1.0))
    B = signal * moved + noise * rng.normal(size=shape)
    return layout, A, B


modes = st.sampled_from(["spatial", "flatten", "channel"])
thresholds = st.sampled_from([0.5, 0.9, 0.99, 1.0])
