"""seis-sklearn: Subspace-based Equivariance and Invariance Scores for neural network layers.

Does a layer keep, re-encode or discard what a geometric transformation does to
its input? Record its activations on a batch (``A``) and on the transformed batch
(``B``), then::

    >>> import numpy as np
    >>> from seis_sklearn import seis_score
    >>> A = np.random.default_rng(0).normal(size=(32, 8, 7, 7))
    >>> result = seis_score(A, np.rot90(A, axes=(2, 3)), n_components=0.95)
    >>> result.equivariance > 0.9 > result.invariance
    True

The public names are loaded on first use, so ``import seis_sklearn`` itself
imports neither scikit-learn nor any optional dependency.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "DenoisedStack": "._stack",
    "PairedStack": "._stack",
    "SEISResult": "._result",
    "SEISScorer": "._scorer",
    "LatentAction": "._latent",
    "LayoutWarning": "._matricize",
    "latent_action": "._score",
    "SubspaceDenoiser": "._denoiser",
    "matricize": "._matricize",
    "seis_score": "._score",
    "pair": "._stack",
    "orbit": "._stack",
    "transforms": ".transforms",
    "io": ".io",
}
_SUBMODULES = ("transforms", "io")

__all__ = [
    "DenoisedStack",
    "LatentAction",
    "LayoutWarning",
    "PairedStack",
    "SEISResult",
    "SEISScorer",
    "SubspaceDenoiser",
    "latent_action",
    "matricize",
    "orbit",
    "pair",
    "seis_score",
    "__version__",
]


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name], __name__)
        value = module if name in _SUBMODULES else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
