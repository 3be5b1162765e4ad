"""FactoredMatrix: a matrix kept as the product A @ B of two factors, as
TransformerLens's (model.OV, model.QK), over numpy arrays.

The factors may carry leading axes ([layer, head, ...]); every method works on
the last two axes and broadcasts over the rest. The SVD, eigenvalues and norms
come from the factors (one small SVD each), never from the d_model x d_model
product.
"""
from __future__ import annotations

import functools

import numpy as np

from .errors import InvalidIndexError, InvalidInputError, array_of, whole_number


def indexed(x: np.ndarray, index, what: str) -> np.ndarray:
    """x[index], numpy's IndexError, TypeError or ValueError for an index that does not fit
    as InvalidIndexError naming `what`."""
    try:
        return x[index]
    except (IndexError, TypeError, ValueError) as e:
        raise InvalidIndexError(f"{what}: index {index!r} does not fit shape {list(x.shape)} ({e})") from None


def _array(x, what: str) -> np.ndarray:
    arr = array_of(x, what)
    if not (np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.bool_)):
        raise InvalidInputError(f"{what} must be an array of numbers, not dtype {arr.dtype}")
    return arr


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return a @ b
    except ValueError as e:  # leading axes that do not broadcast
        raise InvalidInputError(f"cannot multiply shapes {a.shape} and {b.shape}: {e}") from None


def _transpose(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


def _for_linalg(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays numpy's linalg is given: float16 widened to float32 (linalg has no float16), and
    checked finite (its SVD fails to converge on NaN and eigvals refuses it, as LinAlgError)."""
    out = []
    for x in arrays:
        if not np.isfinite(x).all():
            raise InvalidInputError("a FactoredMatrix whose factors (or their product) hold NaN or infinity has no "
                                    "SVD, norm or eigenvalues")
        out.append(x.astype(np.float32) if x.dtype == np.float16 else x)
    return out


class FactoredMatrix:
    """A @ B with A [..., ldim, mdim] and B [..., mdim, rdim], as
    transformer_lens.FactoredMatrix: AB, BA, T, svd() (U, S, V), eigenvalues,
    norm(), get_corner(k), make_even(), collapse_l/collapse_r, unsqueeze(k),
    indexing over the leading axes, @ with arrays and other FactoredMatrices,
    * with a scalar."""

    __array_ufunc__ = None  # array @ fm calls fm.__rmatmul__ instead of numpy's own matmul

    def __init__(self, A, B):
        A, B = _array(A, "A"), _array(B, "B")
        if A.ndim < 2 or B.ndim < 2:
            raise InvalidInputError(f"a FactoredMatrix's factors are matrices, not shapes {A.shape} and {B.shape}")
        if A.shape[-1] != B.shape[-2]:
            raise InvalidInputError(f"a FactoredMatrix's factors must match on the inner dimension, "
                                    f"shapes were A: {A.shape}, B: {B.shape}")
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        try:
            leading = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except ValueError:
            raise InvalidInputError(f"cannot broadcast the leading axes of A {A.shape} and B {B.shape}") from None
        self.shape = tuple(leading) + (self.ldim, self.rdim)
        self.has_leading_dims = A.ndim > 2 or B.ndim > 2
        self.A = np.broadcast_to(A, leading + (self.ldim, self.mdim))
        self.B = np.broadcast_to(B, leading + (self.mdim, self.rdim))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        return self.A, self.B

    def __repr__(self):
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"

    # ---- products ---------------------------------------------------------------

    @property
    def AB(self) -> np.ndarray:
        """The product [..., ldim, rdim] (large: d_model x d_model per head for OV and QK)."""
        return self.A @ self.B

    @property
    def BA(self) -> np.ndarray:
        """The reverse product [..., mdim, mdim]; only for square matrices (ldim == rdim)."""
        if self.ldim != self.rdim:
            raise InvalidInputError(f"BA needs ldim == rdim, shape was {self.shape}")
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(_transpose(self.B), _transpose(self.A))

    def __matmul__(self, other):
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        other = _array(other, "the right operand")
        if other.ndim == 0 or other.shape[max(-2, -other.ndim)] != self.rdim:  # a vector's only axis
            raise InvalidInputError(f"the right operand must match on the inner dimension, "
                                    f"shapes were {self.shape} and {other.shape}")
        if other.ndim < 2:  # a vector: the product is a vector
            return _matmul(self.A, _matmul(self.B, other[..., None]))[..., 0]
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, _matmul(self.B, other))
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other):
        other = _array(other, "the left operand")
        if other.ndim == 0 or other.shape[-1] != self.ldim:
            raise InvalidInputError(f"the left operand must match on the inner dimension, "
                                    f"shapes were {other.shape} and {self.shape}")
        if other.ndim < 2:
            return _matmul(_matmul(other[..., None, :], self.A), self.B)[..., 0, :]
        if self.ldim > self.mdim:
            return FactoredMatrix(_matmul(other, self.A), self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar) -> FactoredMatrix:
        """Scaled by a number (or a one-element array)."""
        value = array_of(scalar, "the scalar a FactoredMatrix is multiplied by")
        if value.size != 1 or not np.issubdtype(value.dtype, np.number):
            raise InvalidInputError(f"a FactoredMatrix is multiplied by a scalar; use @ for matrices, "
                                    f"not shape {value.shape}")
        return FactoredMatrix(self.A * value.reshape(()), self.B)

    __rmul__ = __mul__

    # ---- decompositions -----------------------------------------------------------

    @functools.cached_property
    def _svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        A, B = _for_linalg(self.A, self.B)
        Ua, Sa, Vha = np.linalg.svd(A, full_matrices=False)
        Ub, Sb, Vhb = np.linalg.svd(B, full_matrices=False)
        with np.errstate(over="ignore", invalid="ignore"):  # finite factors may overflow: refused below
            middle = Sa[..., :, None] * Vha @ Ub * Sb[..., None, :]
        Um, Sm, Vhm = np.linalg.svd(*_for_linalg(middle), full_matrices=False)
        return Ua @ Um, Sm, _transpose(Vhb) @ _transpose(Vhm)

    def svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(U [..., ldim, mdim], S [..., mdim], V [..., rdim, mdim]) with
        U @ diag(S) @ V.T == AB (V, not its transpose, as TransformerLens)."""
        return self._svd

    @property
    def U(self) -> np.ndarray:
        return self._svd[0]

    @property
    def S(self) -> np.ndarray:
        return self._svd[1]

    @property
    def V(self) -> np.ndarray:
        return self._svd[2]

    @property
    def Vh(self) -> np.ndarray:
        """V, under the name TransformerLens has deprecated (it was never the transpose)."""
        return self._svd[2]

    @property
    def eigenvalues(self) -> np.ndarray:
        """The eigenvalues of AB other than its trailing zeros: those of BA [..., mdim] (complex)."""
        A, B = _for_linalg(self.A, self.B)
        if self.ldim != self.rdim:
            raise InvalidInputError(f"eigenvalues need ldim == rdim, shape was {self.shape}")
        with np.errstate(over="ignore", invalid="ignore"):  # finite factors may overflow: refused below
            BA = B @ A
        return np.linalg.eigvals(*_for_linalg(BA))

    def norm(self) -> np.ndarray:
        """The Frobenius norm [...]: the root of the sum of the squared singular values."""
        return np.sqrt((self.S**2).sum(-1))

    def make_even(self) -> FactoredMatrix:
        """The same matrix as U·sqrt(S) times sqrt(S)·V.T: each factor holds half the singular values."""
        root = np.sqrt(self.S)
        return FactoredMatrix(self.U * root[..., None, :], root[..., :, None] * _transpose(self.V))

    def collapse_l(self) -> np.ndarray:
        """diag(S) @ V.T [..., mdim, rdim]: the matrix without its left orthogonal factor."""
        return self.S[..., :, None] * _transpose(self.V)

    def collapse_r(self) -> np.ndarray:
        """U @ diag(S) [..., ldim, mdim]: the matrix without its right orthogonal factor."""
        return self.U * self.S[..., None, :]

    # ---- indexing -----------------------------------------------------------------

    def unsqueeze(self, k: int) -> FactoredMatrix:
        k = whole_number(k, "unsqueeze's axis")
        if not -self.ndim - 1 <= k <= self.ndim:  # torch's unsqueeze's range
            raise InvalidIndexError(f"unsqueeze's axis {k} is out of range for a FactoredMatrix of shape {self.shape} "
                                    f"([{-self.ndim - 1}, {self.ndim}])")
        return FactoredMatrix(np.expand_dims(self.A, k), np.expand_dims(self.B, k))

    def __getitem__(self, idx) -> FactoredMatrix:
        """Indexes the leading axes; an index as long as the shape also
        selects rows (of A) and columns (of B), keeping both axes."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        length = len([i for i in idx if i is not None])
        what = f"a FactoredMatrix of shape {self.shape}"
        if length <= self.ndim - 2:
            return FactoredMatrix(indexed(self.A, idx, what), indexed(self.B, idx, what))
        if length == self.ndim - 1:
            idx = idx[:-1] + (_kept_axis(idx[-1], self.ldim, what),)
            return FactoredMatrix(indexed(self.A, idx, what), indexed(self.B, idx[:-1], what))
        if length == self.ndim:
            idx = idx[:-2] + (_kept_axis(idx[-2], self.ldim, what), _kept_axis(idx[-1], self.rdim, what))
            return FactoredMatrix(indexed(self.A, idx[:-1], what),
                                  indexed(self.B, idx[:-2] + (slice(None), idx[-1]), what))
        raise InvalidIndexError(f"{idx} is too long an index for {what}")

    def get_corner(self, k: int = 3) -> np.ndarray:
        """The top-left k x k (and first k of each leading axis) of AB, without forming AB."""
        k = whole_number(k, "get_corner's k")
        return get_corner(self.A[..., :k, :] @ self.B[..., :, :k], k)


def _kept_axis(index, size: int, what: str):
    """An integer row or column index as a slice of one (the axis stays), as TransformerLens does;
    one out of range is refused (its slice would be empty)."""
    if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
        if not -size <= index < size:
            raise InvalidIndexError(f"{what}: row or column {index} is out of range for {size}")
        return slice(index, index + 1 if index != -1 else None)
    return index


def get_corner(x, n: int = 3):
    """The first n of every axis of an array or a FactoredMatrix (utils.get_corner)."""
    n = whole_number(n, "get_corner's n")
    x = x if isinstance(x, FactoredMatrix) else array_of(x, "get_corner's x")
    return x[tuple(slice(n) for _ in range(x.ndim))]


def composition_scores(left: FactoredMatrix, right: FactoredMatrix, broadcast_dims: bool = True) -> np.ndarray:
    """‖left·right‖ / (‖left‖·‖right‖) (Frobenius norms) of each pair of matrices,
    as transformer_lens.utils.composition_scores; with broadcast_dims the result's
    axes are left's leading axes, then right's."""
    if not (isinstance(left, FactoredMatrix) and isinstance(right, FactoredMatrix)):
        raise InvalidInputError("composition_scores takes two FactoredMatrix objects")
    if broadcast_dims:
        r_leading, l_leading = right.ndim - 2, left.ndim - 2
        for i in range(l_leading):
            right = right.unsqueeze(i)
        for i in range(r_leading):
            left = left.unsqueeze(i + l_leading)
    if left.rdim != right.ldim:
        raise InvalidInputError(f"composition scores need left.rdim == right.ldim, shapes were "
                                f"left: {left.shape}, right: {right.shape}")
    new_right, new_left = right.collapse_r(), left.collapse_l()
    r_norms = np.linalg.norm(new_right, axis=(-2, -1))
    l_norms = np.linalg.norm(new_left, axis=(-2, -1))
    comp_norms = np.linalg.norm(new_left @ new_right, axis=(-2, -1))
    return comp_norms / r_norms / l_norms
