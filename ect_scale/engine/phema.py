"""Post-hoc EMA (EDM2 Sec. 3.2, App. C.5): an EMA of any sigma_rel as a linear combination of stored power-EMA
snapshots.

A power-function EMA with exponent gamma at time t (images seen) averages the training trajectory with the
profile p_{t,gamma}(tau) = (gamma+1) tau^gamma / t^(gamma+1) on [0, t] (EDM2 Eq. 121). Snapshots taken at times
t_i of EMAs with exponents gamma_i are profiles p_i; the target profile p_out (t_out, gamma_out) is approximated
in L2 by sum_i x_i p_i, i.e. the normal equations A x = b with
    A_ij = <p_i, p_j>,  b_i = <p_i, p_out>   (EDM2 Eq. 151 gives <.,.> in closed form)
and the weights are then column-normalised to sum to one (Alg. 3), so the result is an average of snapshots.
Because every snapshot is linear in the trajectory, the same combination of the snapshot *weights* is the EMA
of sigma_rel_out at t_out, up to the profile residual reported by `profile_error`.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ect_scale.engine.ema import exp_to_std, std_to_exp

__all__ = [
    "power_function_correlation",
    "solve_posthoc_coefficients",
    "profile_error",
    "combine",
    "std_to_exp",
    "exp_to_std",
]


def _exps(stds) -> np.ndarray:
    return np.vectorize(std_to_exp, otypes=[np.float64])(np.asarray(stds, dtype=np.float64))


def power_function_correlation(a_ofs, a_std, b_ofs, b_std) -> np.ndarray:
    """<p_a, p_b> of two power-function EMA profiles (EDM2 Eq. 151), broadcast over arrays:
        (ga+1)(gb+1) (ta/tb)^e / ((ga+gb+1) max(ta, tb)),  e = gb if ta < tb else -ga.
    The exponent is applied to the time ratio, which keeps it finite for large gamma."""
    a_ofs, b_ofs = np.asarray(a_ofs, dtype=np.float64), np.asarray(b_ofs, dtype=np.float64)
    a_exp, b_exp = _exps(a_std), _exps(b_std)
    t_ratio = a_ofs / b_ofs
    t_exp = np.where(a_ofs < b_ofs, b_exp, -a_exp)
    t_max = np.maximum(a_ofs, b_ofs)
    return (a_exp + 1) * (b_exp + 1) * t_ratio**t_exp / ((a_exp + b_exp + 1) * t_max)


def _gram(in_ofs: np.ndarray, in_std: np.ndarray, out_ofs: np.ndarray, out_std: np.ndarray):
    A = power_function_correlation(in_ofs[:, None], in_std[:, None], in_ofs[None, :], in_std[None, :])
    B = power_function_correlation(in_ofs[:, None], in_std[:, None], out_ofs[None, :], out_std[None, :])
    return A, B


def solve_posthoc_coefficients(
    in_ofs: Sequence[float], in_std: Sequence[float], out_ofs: Sequence[float], out_std: Sequence[float]
) -> np.ndarray:
    """Weights X [n_in, n_out] with theta_out_k = sum_i X[i, k] theta_i (EDM2 Alg. 3): solve A X = B, then
    normalise every column to sum 1. Times are images seen (> 0); stds are sigma_rel in (0, 12^-0.5)."""
    in_ofs, in_std = np.asarray(in_ofs, np.float64), np.asarray(in_std, np.float64)
    out_ofs, out_std = np.asarray(out_ofs, np.float64), np.asarray(out_std, np.float64)
    if in_ofs.ndim != 1 or in_ofs.shape != in_std.shape or out_ofs.shape != out_std.shape:
        raise ValueError("in_ofs/in_std and out_ofs/out_std must be 1-D arrays of equal length")
    if (in_ofs <= 0).any() or (out_ofs <= 0).any():
        raise ValueError("snapshot and output times must be > 0 images (a profile at t = 0 is undefined)")
    A, B = _gram(in_ofs, in_std, out_ofs, out_std)
    X = np.linalg.solve(A, B)
    return X / X.sum(axis=0, keepdims=True)


def profile_error(
    in_ofs: Sequence[float], in_std: Sequence[float], out_ofs: Sequence[float], out_std: Sequence[float], X: np.ndarray
) -> np.ndarray:
    """Relative L2 error of the reconstructed averaging profile, per output:
        ||sum_i x_i p_i - p_out|| / ||p_out|| = sqrt(x'Ax - 2 x'b + c) / sqrt(c),  c = <p_out, p_out>.
    Independent of the network: it says how well the snapshots can express the requested EMA."""
    in_ofs, in_std = np.asarray(in_ofs, np.float64), np.asarray(in_std, np.float64)
    out_ofs, out_std = np.asarray(out_ofs, np.float64), np.asarray(out_std, np.float64)
    A, B = _gram(in_ofs, in_std, out_ofs, out_std)
    c = power_function_correlation(out_ofs, out_std, out_ofs, out_std)
    sq = np.einsum("ik,ij,jk->k", X, A, X) - 2 * np.einsum("ik,ik->k", X, B) + c
    return np.sqrt(np.maximum(sq, 0.0) / c)


def combine(
    states: Iterable[dict[str, torch.Tensor]], coefs: np.ndarray, copy_keys: Iterable[str] = ()
) -> Iterator[dict[str, torch.Tensor]]:
    """sum_i coefs[i, k] * state_i for every output k, streaming over the inputs once (one input in memory at a
    time, fp32 accumulators). Non-floating tensors and `copy_keys` (buffers, equal in every snapshot) are taken
    from the first input. Yields the outputs in order."""
    copy_keys = set(copy_keys)
    outs: list[dict[str, torch.Tensor]] = []
    first: dict[str, torch.Tensor] = {}
    n = 0
    for i, state in enumerate(states):
        if i == 0:
            first = state
            outs = [
                {
                    k: torch.zeros_like(v, dtype=torch.float32)
                    for k, v in state.items()
                    if v.is_floating_point() and k not in copy_keys
                }
                for _ in range(coefs.shape[1])
            ]
        for k, out in enumerate(outs):
            w = float(coefs[i, k])
            for name, acc in out.items():
                acc.add_(state[name].to(torch.float32), alpha=w)
        n += 1
    if n != coefs.shape[0]:
        raise ValueError(f"combine: got {n} snapshots for {coefs.shape[0]} coefficient rows")
    for out in outs:
        yield {**{k: v for k, v in first.items() if k not in out}, **out}
