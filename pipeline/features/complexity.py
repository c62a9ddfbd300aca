"""Per-frame entropy and statistical complexity of a power spectrum (Lopez-Ruiz-Mancini-Calbet family).

Each frame of a power spectrum ``S`` (``N`` bins) is treated as a probability
distribution ``p = S / sum(S)`` and compared with the uniform distribution
``u = 1 / N``. With natural logarithms and ``0 ln 0 = 0``:

- normalised Shannon entropy ``H = -sum_i p_i ln p_i / ln N``;
- three disequilibria, each within ``[0, 1]``:

  - ``D_SQ = N / (N - 1) * sum_i (p_i - u)**2``, the squared Euclidean
    distance normalised to ``[0, 1]`` (1 at a delta);
  - ``D_JSD = JSD(p, u) / JSD_max`` with the Jensen-Shannon divergence
    ``JSD(p, u) = S((p + u) / 2) - S(p) / 2 - S(u) / 2`` (``S``: Shannon
    entropy in nats) and
    ``JSD_max = -1/2 [(N + 1) / N ln(N + 1) - 2 ln(2N) + ln N]``, its value at
    a delta (the normalisation of Rosso et al. 2007, Phys. Rev. Lett. 99,
    154102), so ``D_JSD = 1`` at a delta;
  - ``D_TV = (sum_i |p_i - u|)**2 / 4``, the squared total-variation
    distance (``((N - 1) / N)**2`` at a delta);

- the complexities ``C_SQ = H * D_SQ``, ``C_JSD = H * D_JSD`` and
  ``C_TV = H * D_TV``.

Known answers: a uniform spectrum gives ``H = 1`` and every ``C = 0``; a
single-bin spectrum gives ``H = 0`` and every ``C = 0``; every value lies in
``[0, 1]``. A frame with zero total power (digital silence) has no
distribution; it is treated as uniform (``H = 1``, every ``D`` and ``C`` 0),
the limit of a flat noise floor, so silence maps to a finite constant.

Numerics: the work runs in float32 in blocks of frames, written in terms of
``r = N p`` (see :func:`measures_bins_major`) so that the error stays below
~5e-7 absolute, at the level of the float32 rounding of the spectrum itself.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["complexity", "disequilibria", "jsd_max"]

# Elements (bins x frames) per block: the two float32 work arrays of a block
# (256 KiB each) stay in L2 cache.
_BLOCK_ELEMENTS = 1 << 16

_TINY = np.finfo(np.float32).tiny


def jsd_max(n_bins: int) -> float:
    """Jensen-Shannon divergence (nats) between a delta and the uniform distribution on ``n_bins`` bins.

    ``-1/2 [(N + 1) / N ln(N + 1) - 2 ln(2N) + ln N]``, the largest value of
    ``JSD(p, u)`` over all distributions ``p`` on ``N`` bins.

    Raises
    ------
    ValueError
        If ``n_bins`` is not an integer >= 2.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer >= 2. Received: n_bins={n_bins!r}")
    n = float(n_bins)
    return -0.5 * ((n + 1.0) / n * math.log(n + 1.0) - 2.0 * math.log(2.0 * n) + math.log(n))


def normalise_bins_major(A: np.ndarray, out: np.ndarray) -> None:
    """Write ``r = N * A / sum(A)`` per frame (column) of ``A [N, frames]`` into float32 ``out``.

    ``r`` sums to ``N`` per frame (``r = 1`` everywhere is uniform); all-zero
    frames become uniform. ``out`` may be ``A`` itself (float32). ``A`` must
    be non-negative (not checked here).

    Raises
    ------
    ValueError
        If a frame's total is NaN or infinite.
    """
    n = A.shape[0]
    total = A.sum(axis=0, dtype=np.float64)  # float64: a float32 sum's error would bias H by up to ~N eps
    if not np.isfinite(total).all():
        raise ValueError(
            "S must be finite (no NaN or infinity). Received: a frame whose total power is NaN or infinite"
        )
    silent = total <= 0
    scale = n / np.where(silent, 1.0, total)
    if A.dtype == np.float32 and scale.max(initial=0.0) < 1e30:
        np.multiply(A, scale.astype(np.float32), out=out)
    else:  # other dtypes, or totals so tiny that a float32 scale would overflow
        np.multiply(A, scale, out=out, casting="unsafe")
    if silent.any():
        out[:, silent] = 1.0


def _sum_rows(a: np.ndarray, spare: np.ndarray) -> np.ndarray:
    """Column sums of float32 ``a [N, frames]`` by pairwise addition of rows; ``a`` and ``spare`` are overwritten.

    Each level adds the upper half of the rows to the lower half (an odd
    middle row waits a level), so every sum is a balanced tree: its rounding
    error grows with ``log2(N)``, not ``N``. Levels alternate between ``a``
    and ``spare`` (``[>= ceil(N / 2), frames]``): an in-place add of two
    halves of one array makes numpy copy one of them first, 4x slower.
    """
    n, src, dst = a.shape[0], a, spare
    while n > 1:
        half = n // 2
        np.add(src[:half], src[n - half : n], out=dst[:half])
        if n - half > half:
            dst[half] = src[half]
        n -= half
        src, dst = dst, src
    return src[0]


def measures_bins_major(r: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``(H, D_SQ, D_JSD, D_TV)`` per frame from normalised spectra (definitions in the module doc).

    Parameters
    ----------
    r : np.ndarray [shape=(N, frames)], float32
        ``N * p`` per frame, as written by :func:`normalise_bins_major`;
        overwritten.
    scratch : np.ndarray [shape=(N, frames)], float32
        Work space; overwritten.

    Returns
    -------
    np.ndarray [shape=(4, frames)], float64, within [0, 1]

    Notes
    -----
    Written in ``r = N p`` so that the large constant ``ln N`` never enters a
    float32 sum (with ``m' = (r + 1) / 2 = N (p + u) / 2``):

    - ``sum p ln p = sum(r ln r) / N - ln N``, so ``H = 1 - sum(r ln r) / (N ln N)``;
    - ``JSD(p, u) = [sum(r ln r) / 2 - sum(m' ln m')] / N``;
    - ``D_SQ = sum (r - 1)**2 / (N (N - 1))``, ``D_TV = (sum |r - 1| / N)**2 / 4``.

    Near uniform, ``ln r`` and ``ln m'`` are near 0, so rounding errors shrink
    with the distance from uniform instead of scaling with ``ln N``. Against
    a float64 evaluation the error is below ~5e-7 absolute (measured on
    noise, chirps, near-uniform and heavy-tailed spectra), the size of the
    float32 rounding of the input spectrum itself, at about half the cost of
    float64 (whose ``np.log`` is ~2.5x slower than float32's here).
    """
    n = r.shape[0]
    sums = np.empty((4, r.shape[1]))
    spare = np.empty(((n + 1) // 2, r.shape[1]), np.float32)
    # Elementwise work in float32; sums over bins by pairwise addition in
    # float32 (:func:`_sum_rows`): a running float32 sum over N bins errs by
    # up to ~N eps of its largest term (2e-5 on D_JSD of a delta at N = 257),
    # a pairwise one by ~log2(N) eps, at under half the cost of a float64
    # running sum along this strided axis.
    # r + tiny equals r for any r above ~1e-31 and turns r = 0 into
    # 0 * ln(tiny) = 0 (0 ln 0 = 0), cheaper than np.maximum or a masked log.
    np.add(r, _TINY, out=scratch)
    np.log(scratch, out=scratch)
    scratch *= r
    sums[0] = _sum_rows(scratch, spare)  # sum r ln r
    np.subtract(r, 1.0, out=scratch)  # r - 1 = N (p - u)
    np.abs(scratch, out=scratch)
    sums[3] = _sum_rows(scratch, spare)  # sum |r - 1|
    np.subtract(r, 1.0, out=scratch)
    np.square(scratch, out=scratch)
    sums[1] = _sum_rows(scratch, spare)  # sum (r - 1)**2
    np.multiply(r, 0.5, out=scratch)
    scratch += 0.5  # m' = (r + 1) / 2 >= 1/2, so no log floor is needed
    np.log(scratch, out=r)
    r *= scratch
    sums[2] = _sum_rows(r, spare)  # sum m' ln m'

    out = np.empty_like(sums)
    out[0] = 1.0 - sums[0] / (n * math.log(n))
    out[1] = sums[1] / (n * (n - 1.0))
    out[2] = (0.5 * sums[0] - sums[2]) / (n * jsd_max(n))
    out[3] = 0.25 / (n * n) * sums[3] ** 2
    np.clip(out, 0.0, 1.0, out=out)  # only rounding can leave [0, 1]
    return out


def complexities_bins_major(A: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """``(H, C_SQ, C_JSD, C_TV)`` per frame of a bins-major power block, for the fused feature code.

    Parameters
    ----------
    A : np.ndarray [shape=(N, frames)], >= 0 (not checked)
        Power spectrum, one column per frame; overwritten when it is a
        writeable float32 array.
    scratch : np.ndarray [shape=(N, >= frames)], float32, optional
        Work space to reuse between blocks.

    Returns
    -------
    np.ndarray [shape=(frames, 4)], float32
    """
    r = A if A.dtype == np.float32 and A.flags.writeable else np.empty(A.shape, np.float32)
    normalise_bins_major(A, r)
    work = np.empty_like(r) if scratch is None else scratch[:, : r.shape[1]]
    m = measures_bins_major(r, work)
    m[1:] *= m[0]
    return m.T.astype(np.float32)


def _as_spectrum(S, axis) -> np.ndarray:
    """``S`` with its bins axis moved last; ValueError for bad shapes, dtypes or values."""
    S = np.asarray(S)
    if S.ndim < 1 or not (np.issubdtype(S.dtype, np.floating) or np.issubdtype(S.dtype, np.integer)):
        raise ValueError(
            "S must be a real power spectrum array [..., frames, bins]. "
            f"Received: S.shape={S.shape}, S.dtype={S.dtype}"
        )
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -S.ndim <= axis < S.ndim:
        raise ValueError(f"axis must index a dimension of S. Received: axis={axis!r}, S.shape={S.shape}")
    S = np.moveaxis(S, axis, -1)
    if S.shape[-1] < 2:
        raise ValueError(f"S must have at least 2 bins along axis. Received: S.shape={S.shape}, axis={axis}")
    if S.size:
        lowest = S.min()
        if lowest < 0:
            raise ValueError(f"S must be a power spectrum (>= 0). Received: min(S)={lowest!r}")
    return S


def _blockwise(S: np.ndarray, *, complexities: bool) -> np.ndarray:
    lead, n = S.shape[:-1], S.shape[-1]
    flat = S.reshape(-1, n)  # copies only if moveaxis made S non-contiguous
    out = np.empty((flat.shape[0], 4), dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // n)
    r = np.empty((n, min(step, flat.shape[0])), dtype=np.float32)
    scratch = np.empty_like(r)
    for r0 in range(0, flat.shape[0], step):
        block = flat[r0 : r0 + step].T  # bins-major view; normalising copies it into r
        frames = block.shape[1]
        normalise_bins_major(block, r[:, :frames])
        m = measures_bins_major(r[:, :frames], scratch[:, :frames])
        if complexities:
            m[1:] *= m[0]
        out[r0 : r0 + frames] = m.T
    return out.reshape(*lead, 4)


def complexity(S: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Normalised entropy and three statistical complexities per frame (definitions in the module doc).

    Parameters
    ----------
    S : np.ndarray [shape=(..., frames, bins)], real, >= 0, finite
        Power spectrum in any units (only proportions within a frame
        matter), e.g. the output of :func:`pipeline.features.mel.mel_power`
        or :func:`pipeline.features.mel.stft_power`; at least 2 bins.
    axis : int
        The bins axis of ``S`` (default: last). It is reduced away and the
        four measures form a new last axis, so librosa-layout input
        ``[bins, frames]`` with ``axis=0`` gives time-major ``[frames, 4]``.

    Returns
    -------
    np.ndarray [shape=(..., frames, 4)], float32, within [0, 1]
        ``(H, C_SQ, C_JSD, C_TV)`` per frame; frames with zero total power
        give ``(1, 0, 0, 0)``. Absolute error below ~5e-7 (see
        :func:`measures_bins_major`).

    Raises
    ------
    ValueError
        If ``S`` has fewer than 2 bins, a negative, NaN or infinite value, a
        non-numeric dtype, or ``axis`` is out of range.
    """
    return _blockwise(_as_spectrum(S, axis), complexities=True)


def disequilibria(S: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Normalised entropy and the three disequilibria per frame (definitions in the module doc).

    Parameters
    ----------
    S : np.ndarray [shape=(..., frames, bins)], real, >= 0, finite
    axis : int
        The bins axis of ``S``, as in :func:`complexity`.

    Returns
    -------
    np.ndarray [shape=(..., frames, 4)], float32, within [0, 1]
        ``(H, D_SQ, D_JSD, D_TV)`` per frame, so that ``C = H * D``.

    Raises
    ------
    ValueError
        As :func:`complexity`.
    """
    return _blockwise(_as_spectrum(S, axis), complexities=False)
