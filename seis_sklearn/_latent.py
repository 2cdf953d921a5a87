"""The latent action of a group on a layer's denoised features (SPEC §2.5)."""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np


@dataclass(frozen=True, repr=False)
class LatentAction:
    """Estimated linear maps ``T̂_g`` and how far they are from a representation of G.

    Attributes
    ----------
    maps : ndarray of shape (n_elements, k, k)
        ``T̂_g = argmin_T ‖X T − Y_g‖`` in the pooled denoised subspace (centred
        coordinates ``P̃ V_k``), one per transformed view, in the order given.
    orthogonality_defects : ndarray of shape (n_elements,)
        ``‖T̂_gᵀT̂_g − I‖ / ‖I‖`` (Frobenius).
    order_defects : ndarray of shape (n_elements,) or None
        For a cyclic group given as generator powers: ``‖T̂_g^{|g|} − I‖ / ‖I‖``.
    homomorphism_defects : ndarray of shape (n_elements, n_elements) or None
        For a cyclic group: ``‖T̂_a T̂_b − T̂_{a+b}‖ / ‖T̂_{a+b}‖`` for the powers
        ``a, b`` (``T̂_0 = I``).
    orthogonality_defect, order_defect, homomorphism_defect : float or None
        The largest of each.
    degenerate : bool
        The defects should not be read at face value: ``degenerate_reason`` says
        why (k at least half the rows, so that a least-squares map fits any
        views; k capped by the rows below the variance share asked for).
    degenerate_reason : str
        Empty when ``degenerate`` is false.
    """

    maps: np.ndarray
    orthogonality_defects: np.ndarray
    order_defects: np.ndarray | None
    homomorphism_defects: np.ndarray | None
    degenerate_reason: str = ""

    @property
    def degenerate(self):
        return bool(self.degenerate_reason)

    @property
    def orthogonality_defect(self):
        return float(self.orthogonality_defects.max())

    @property
    def order_defect(self):
        return None if self.order_defects is None else float(self.order_defects.max())

    @property
    def homomorphism_defect(self):
        if self.homomorphism_defects is None:
            return None
        return float(self.homomorphism_defects.max())

    def __repr__(self):
        k = self.maps.shape[1]
        parts = [f"orthogonality defect {self.orthogonality_defect:.3g}"]
        if self.order_defects is not None:
            parts.append(f"order defect {self.order_defect:.3g}")
            parts.append(f"homomorphism defect {self.homomorphism_defect:.3g}")
        if self.degenerate:
            parts.append(f"DEGENERATE: {self.degenerate_reason}")
        return f"LatentAction({len(self.maps)} maps of {k}×{k}; " + ", ".join(parts) + ")"


def _relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def estimate(moments, components, cyclic, rcond=1e-10, degenerate_reason=""):
    """The maps and defects from the views' moments and the pooled basis ``V_k``
    (``degenerate_reason``: why they should not be read at face value, or "")."""
    V = components
    m = moments.n_rows
    sxx = V.T @ moments.auto[0] @ V / m
    k = sxx.shape[0]
    # least squares through the pseudo-inverse: directions of the pooled subspace that
    # the original view barely spans are cut (relative cutoff), not damped by a ridge
    cross = np.concatenate([V.T @ c @ V / m for c in moments.cross], axis=1)
    solved = np.linalg.lstsq(sxx, cross, rcond=rcond)[0]
    maps = np.stack(np.split(solved, len(moments.cross), axis=1))
    eye = np.eye(k)
    orthogonality = np.array([_relative(T.T @ T, eye) for T in maps])
    if not cyclic:
        return LatentAction(maps, orthogonality, None, None, degenerate_reason)
    n = len(maps) + 1  # the group's order: the identity and every power given

    def power(j):
        return eye if j % n == 0 else maps[j % n - 1]

    order = np.array(
        [_relative(np.linalg.matrix_power(power(j), n // gcd(j, n)), eye) for j in range(1, n)]
    )
    homomorphism = np.array(
        [[_relative(power(a) @ power(b), power(a + b)) for b in range(1, n)] for a in range(1, n)]
    )
    return LatentAction(maps, orthogonality, order, homomorphism, degenerate_reason)
