"""How each recorded layer is read: its layout and the prefix tokens before its patches.

A network's layers do not share one layout. torchvision's and timm's Swin emit their
stages channels last, ``(N, H, W, C)``, beside channels-first convolutions and a 2-D
head; a ViT's blocks emit ``(N, L, D)`` tokens with one class token (or a class, a
distillation and register tokens) before the patches, and its head a vector. Reading
``(N, 16, 16, 96)`` as NCHW makes spatial mode treat the 96 channels as positions:
numbers without meaning and without an error.

So every layer gets its own :class:`Reading`, decided before the pass from a forward
pass of two samples (the report's sizing probe):

* **by the grid** — the input's spatial grid ``(H, W)`` is known; a 4-D layer's two
  spatial axes have the grid's shape at some stride (``⌊H/s⌋`` or ``⌈H/s⌉`` by
  ``⌊W/s⌋`` or ``⌈W/s⌉``), and the other axis holds the channels. Exactly one of
  NCHW and NHWC fitting decides it;
* **by a probe**, where both fit (``C = H = W``): two forward passes of the same two
  samples, the second with the input's lower-right quadrant replaced. The change of
  a layer's output is concentrated in the upper halves of its spatial axes and spread
  over its channels; the layout whose spatial axes hold more of it wins, by a margin;
* **tokens** ``(N, L, D)``: NLD; with ``tokens="auto"`` (the default) the model's own
  prefix (timm's ``num_prefix_tokens``, torchvision's ``class_token``, a Hugging Face
  config) is dropped where the rest tiles the input's grid, and every token is kept
  where the model does not say (:func:`auto_prefix`); with ``tokens="patch"`` the
  prefix of each layer is the count that leaves a grid of patches — the model's own
  count where it does, none where ``L`` already is a grid; ``tokens="all"`` keeps every
  token. The ``layout_choice`` column says what was read;
* a layout given for the layer (``layout={"features.1": "NHWC"}``), or one string for
  every layer of its number of axes, is taken as it is.

Where none of this decides, the report stops before the pass with an error naming the
layer and how to say its layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seis_sklearn._matricize import _NDIM_BY_LAYOUT, LAYOUTS, resolve_layout

#: The largest number of prefix tokens (class, distillation, register tokens) looked for.
MAX_PREFIX = 16
# The probe decides when the spatial axes of one layout hold this much more of the
# change of the output than those of the other (fractions of the change in the upper
# half of each axis, summed over the two spatial axes).
PROBE_MARGIN = 0.1


@dataclass(frozen=True)
class Reading:
    """How one layer's activations are read.

    Attributes
    ----------
    layout : str
        A concrete layout (``"NCHW"``, ``"NHWC"``, ``"NCDHW"``, ``"NLD"``, ``"ND"``).
    n_prefix : int
        Leading tokens dropped before scoring (token layers with ``tokens="patch"``).
    choice : str
        How the layout was decided, in words (the report's ``layout_choice`` column).
    pool : int, default=1
        Average pooling of the map over ``pool × pool`` blocks before scoring (a
        budget's remedy, :mod:`seis_sklearn.adapters._budget`).
    remedy : str
        What the budget changed and why (the report's ``remedy`` column).
    skip : str
        Why the layer is not scored at all (beyond the budget, no remedy), or ``""``.
    """

    layout: str
    n_prefix: int = 0
    choice: str = "given"
    pool: int = 1
    remedy: str = ""
    skip: str = ""


class LayoutError(ValueError):
    """A layer whose layout cannot be told from its shape nor from the probe."""


def _sizes(n, stride):
    return {n // stride, -(-n // stride)}


def fits_grid(h, w, grid):
    """Whether an ``h × w`` map is the input grid at some stride (or the grid itself
    upsampled by an integer factor)."""
    if grid is None or h < 1 or w < 1:
        return False
    H, W = grid
    if h * W == w * H:
        return True
    for stride in range(2, max(H, W) + 1):
        if h in _sizes(H, stride) and w in _sizes(W, stride):
            return True
    return False


def _token_grid(n_tokens, grid):
    """Whether ``n_tokens`` patches tile the input grid at some stride."""
    if grid is None or n_tokens < 1:
        return False
    H, W = grid
    for stride in range(1, max(H, W) + 1):
        for h in _sizes(H, stride):
            for w in _sizes(W, stride):
                if h * w == n_tokens:
                    return True
    return False


def token_prefix(n_tokens, grid, model_prefix):
    """Prefix tokens of a layer of ``n_tokens`` tokens, and how they were found.

    Returns
    -------
    (int, str) or None
        None when no count leaves a grid of patches and the model says none.
    """
    if model_prefix is not None and 0 <= model_prefix < n_tokens:
        if _token_grid(n_tokens - model_prefix, grid):
            return model_prefix, f"tokens: the model's {model_prefix} prefix token(s) dropped"
    if _token_grid(n_tokens, grid):
        return 0, "tokens: all of them are patches"
    for count in range(1, min(MAX_PREFIX, n_tokens - 1) + 1):
        if _token_grid(n_tokens - count, grid):
            return count, f"tokens: {count} prefix token(s) before a grid of patches, dropped"
    if model_prefix is not None and 0 <= model_prefix < n_tokens:
        return model_prefix, f"tokens: the model's {model_prefix} prefix token(s) dropped"
    return None


def input_grid(shape):
    """The spatial grid ``(H, W)`` of an input batch of images ``(N, C, H, W)``, else None."""
    return tuple(int(s) for s in shape[-2:]) if len(shape) == 4 else None


def _given(layout, ndim):
    """The layout given for a layer (a str for every layer), if it applies to ``ndim``."""
    if layout is None or layout == "auto":
        return None
    return layout if _NDIM_BY_LAYOUT[layout] == ndim else None


def check_layout_argument(layout, layers=None):
    """``layout`` as given to a report: ``"auto"``, one layout, or a dict layer → layout.

    Raises
    ------
    ValueError
        Naming ``layout`` and the problem (an unknown layout, a layer not recorded).
    """
    if isinstance(layout, str):
        if layout != "auto" and layout not in LAYOUTS:
            raise ValueError(
                f"layout must be 'auto', one of {', '.join(LAYOUTS)} or a dict layer → "
                f"layout; got {layout!r}"
            )
        return layout
    if not isinstance(layout, dict):
        raise TypeError(
            f"layout must be a str or a dict layer → layout; got {type(layout).__name__}"
        )
    for name, value in layout.items():
        if value not in LAYOUTS and value != "auto":
            raise ValueError(
                f"layout[{name!r}] must be one of {', '.join(LAYOUTS)} or 'auto'; got {value!r}"
            )
        if layers is not None and name not in layers:
            raise ValueError(f"layout names {name!r}, which is not among the layers scored")
    return dict(layout)


def _for_layer(layout, key):
    if isinstance(layout, dict):
        return layout.get(key, layout.get(key.split("#")[0], "auto"))
    return layout


def read_layers(
    shapes, grid, *, layout="auto", tokens="all", model_prefix=None, probe=None,
    prefix_given=False,
):  # fmt: skip
    """The :class:`Reading` of every layer (module docstring).

    Parameters
    ----------
    shapes : dict
        Layer key → per-sample shape of its activations.
    grid : tuple of int or None
        The input's spatial grid (:func:`input_grid`).
    layout : str or dict
        As :func:`check_layout_argument` returns it.
    tokens : {"auto", "all", "patch"}
    model_prefix : int or None
        The prefix tokens the model says it has (or ``n_prefix`` given).
    prefix_given : bool, default=False
        ``model_prefix`` was given by the user (``n_prefix=``): every token layer
        loses exactly that many tokens (an error for a layer that has no more).
    probe : callable, optional
        ``probe() → layer key → (original, changed)`` arrays of two samples, the
        second with the input's lower-right quadrant replaced; called at most once,
        where a layer's layout is ambiguous.

    Returns
    -------
    dict
        Layer key → :class:`Reading`.

    Raises
    ------
    LayoutError
        For a layer whose layout cannot be told (naming it and how to say it).
    """
    readings, ambiguous = {}, []
    for key, shape in shapes.items():
        ndim = len(shape) + 1
        named = _for_layer(layout, key) if isinstance(layout, dict) else "auto"
        if named != "auto" and _NDIM_BY_LAYOUT[named] != ndim:
            raise LayoutError(
                f"layout[{key!r}] = {named!r} needs {_NDIM_BY_LAYOUT[named]}-D activations; "
                f"layer {key!r} gives {ndim}-D ones, shape {('N', *shape)}"
            )
        given = _given(_for_layer(layout, key), ndim)
        if given is not None:
            readings[key] = _with_tokens(Reading(given, 0, "given"), key, shape, grid, tokens,
                                         model_prefix, prefix_given)  # fmt: skip
            continue
        if ndim == 4:
            channels_first = fits_grid(shape[1], shape[2], grid)
            channels_last = fits_grid(shape[0], shape[1], grid)
            if channels_first and not channels_last:
                readings[key] = Reading("NCHW", 0, f"grid: channels first ({_grid(shape[1:])})")
            elif channels_last and not channels_first:
                readings[key] = Reading("NHWC", 0, f"grid: channels last ({_grid(shape[:2])})")
            elif channels_first:
                ambiguous.append(key)
            else:  # not an image grid (other inputs, or unusual strides): the default
                readings[key] = Reading("NCHW", 0, "default for 4-D (no grid recognised)")
            continue
        concrete = resolve_layout("auto", ndim)
        readings[key] = _with_tokens(Reading(concrete, 0, "default for its axes"), key, shape,
                                     grid, tokens, model_prefix, prefix_given)  # fmt: skip
    if ambiguous:
        if probe is None:
            raise _ambiguous(ambiguous[0], shapes[ambiguous[0]], "no probe could be run")
        changes = probe()
        for key in ambiguous:
            readings[key] = _probe_reading(key, shapes[key], changes.get(key))
    return {key: readings[key] for key in shapes}


def _grid(sizes):
    return f"a {sizes[0]}×{sizes[1]} map"


def auto_prefix(n_tokens, grid, model_prefix):
    """``tokens="auto"``: the prefix tokens of a layer of ``n_tokens`` tokens — the
    model's own count where it says one and the rest tile the input's grid (or no grid
    is known) — and what was read, in words; every token is kept where the model does
    not say (the words then name a count that would leave a grid, for
    ``tokens="patch"``).

    Returns
    -------
    (int, str)
    """
    n, p = n_tokens, model_prefix
    if p is None:
        found = token_prefix(n, grid, None)
        if found is not None and found[0] > 0:
            return 0, (
                f"tokens: all {n} kept — the model does not say its prefix tokens; "
                f"{found[0]} would leave a grid of patches (tokens='patch' drops them)"
            )
        if found is not None:
            return 0, f"tokens: all {n} are patches"
        return 0, f"tokens: all {n} kept (the model does not say its prefix tokens)"
    if p == 0:
        return 0, f"tokens: all {n} kept (the model has no prefix tokens)"
    if p < n and (grid is None or _token_grid(n - p, grid)):
        return p, f"tokens: the model's {p} prefix token(s) dropped, {n - p} patches read"
    if _token_grid(n, grid):
        return 0, f"tokens: all {n} are patches"
    return 0, (
        f"tokens: all {n} kept — the model's {p} prefix token(s) leave no grid of patches "
        "of the input here"
    )


def _with_tokens(reading, key, shape, grid, tokens, model_prefix, prefix_given=False):
    if reading.layout != "NLD":
        return reading
    if tokens == "all":
        found = 0, f"tokens: all {shape[0]} kept (tokens='all')"
    elif prefix_given:
        if model_prefix >= shape[0]:
            raise LayoutError(
                f"n_prefix={model_prefix} (--prefix-tokens) is not below the {shape[0]} tokens "
                f"of layer {key!r}: nothing would be left to score"
            )
        found = model_prefix, f"tokens: n_prefix={model_prefix} given, dropped"
    elif tokens == "auto":
        found = auto_prefix(shape[0], grid, model_prefix)
    else:
        found = token_prefix(shape[0], grid, model_prefix)
    if found is None:
        raise LayoutError(
            f"layer {key!r}: tokens='patch', but its {shape[0]} tokens leave no grid of "
            "patches of the input and the model does not say how many prefix tokens it has: "
            "pass n_prefix= (--prefix-tokens N)"
        )
    count, note = found
    choice = note if reading.choice != "given" else f"given; {note}"
    return Reading(reading.layout, count, choice)


def _upper_half_share(change, axis):
    """Fraction of the change's energy in the upper half of ``axis`` (per-sample axes)."""
    energy = np.moveaxis(change**2, axis + 1, 0).reshape(change.shape[axis + 1], -1).sum(axis=1)
    total = energy.sum()
    if not total > 0:
        return 0.5
    half = energy.size // 2
    return float(energy[energy.size - half :].sum() / total)


def _probe_reading(key, shape, pair):
    if pair is None:
        raise _ambiguous(key, shape, "it did not run in the probe")
    original, changed = (np.asarray(a, dtype=np.float64) for a in pair)
    change = changed - original
    share = [_upper_half_share(change, axis) for axis in range(3)]
    first, last = share[1] + share[2], share[0] + share[1]
    if abs(first - last) < PROBE_MARGIN:
        raise _ambiguous(
            key, shape,
            f"a change of the input's lower-right quadrant moved its axes alike ({share[0]:.2f}, "
            f"{share[1]:.2f}, {share[2]:.2f} of the change in their upper halves)",
        )  # fmt: skip
    if first > last:
        return Reading("NCHW", 0, f"probe: channels first ({shape[1]}×{shape[2]} map)")
    return Reading("NHWC", 0, f"probe: channels last ({shape[0]}×{shape[1]} map)")


def _ambiguous(key, shape, why):
    dims = "×".join(map(str, shape))
    return LayoutError(
        f"layer {key!r}: cannot tell whether its {dims} activations are channels first "
        f"(NCHW) or channels last (NHWC) — both fit the input's grid and {why}; say it: "
        f"layout={{{key!r}: 'NCHW'}} (or 'NHWC'), --layout {key}=NCHW on the command line"
    )


def manifest_layouts(shapes, input_shape, layout="auto"):
    """Layer key → the layout to record in a saved-pairs manifest, or None where neither
    the given ``layout`` nor the input's grid tells (the reader decides then)."""
    grid = input_grid(input_shape) if input_shape is not None else None
    found = {}
    for key, shape in shapes.items():
        try:
            reading = read_layers({key: shape}, grid, layout=layout)[key]
        except LayoutError:
            found[key] = None
            continue
        known = reading.choice == "given" or reading.choice.startswith("grid")
        found[key] = reading.layout if known else None
    return found


def read_shape(shape, reading):
    """A layer's per-sample shape as its reading scores it (prefix tokens dropped, the
    map pooled)."""
    shape = tuple(shape)
    if reading is None:
        return shape
    if len(shape) == 2 and reading.n_prefix:
        shape = (max(shape[0] - reading.n_prefix, 0), shape[1])
    if len(shape) == 3 and reading.pool > 1:
        from ._budget import pooled_shape

        shape = pooled_shape(shape, reading.layout, reading.pool)
    return shape
