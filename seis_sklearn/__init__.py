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

See SPEC §2 in the documentation for the exact definitions.
"""

from ._denoiser import SubspaceDenoiser
from ._matricize import matricize
from ._result import SEISResult
from ._scorer import SEISScorer, seis_score

__version__ = "0.1.0"

__all__ = [
    "SEISResult",
    "SEISScorer",
    "SubspaceDenoiser",
    "matricize",
    "seis_score",
    "__version__",
]
