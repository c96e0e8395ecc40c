"""Two answers to the same request, compared row by row: identical, close (``rtol``/``atol``) or different.
Used by the upgrade check (``envserve env check-upgrade``) and by shadow serving."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np

from ..protocol.v2 import InferenceRequest, InferenceResponse

__all__ = ["RowResult", "compare_responses", "rows_of"]


def rows_of(data: Any) -> np.ndarray:
    """An array as rows (its first axis), each row flattened."""
    array: np.ndarray = np.asarray(data)
    return array.reshape(1, -1) if array.ndim == 0 else array.reshape(array.shape[0], -1)


@dataclass
class RowResult:
    output: str
    row: int
    kind: str  # identical | close | different
    diff: float  # largest absolute difference (inf when strings differ)
    current: List[Any]
    candidate: List[Any]

    def inputs(self, request: InferenceRequest) -> Dict[str, Any]:
        return {
            i.name: rows_of(i.data)[self.row].tolist()
            for i in request.inputs
            if np.ndim(i.data) and i.data.shape[0] > self.row
        }


def compare_responses(
    a: InferenceResponse, b: InferenceResponse, rtol: float, atol: float
) -> Tuple[List[RowResult], List[str]]:
    """Every row of every output of ``a`` against ``b``; and what could not be compared (a missing
    output, another shape)."""
    results: List[RowResult] = []
    problems: List[str] = []
    others = {o.name: o for o in b.outputs}
    for out in a.outputs:
        other = others.get(out.name)
        if other is None:
            problems.append("no output named %r in the candidate's answer" % out.name)
            continue
        x, y = rows_of(out.data), rows_of(other.data)
        if x.shape != y.shape:
            problems.append(
                "output %r has shape %s, the current environment's %s"
                % (out.name, list(np.shape(other.data)), list(np.shape(out.data)))
            )
            continue
        numeric = x.dtype.kind in "biuf" and y.dtype.kind in "biuf"
        for row in range(x.shape[0]):
            if numeric:
                xr, yr = x[row].astype(np.float64), y[row].astype(np.float64)
                diff = float(np.max(np.abs(xr - yr))) if xr.size else 0.0
                if np.array_equal(xr, yr, equal_nan=True):
                    kind = "identical"
                elif np.allclose(xr, yr, rtol=rtol, atol=atol, equal_nan=True):
                    kind = "close"
                else:
                    kind = "different"
            else:
                same = [str(p) for p in x[row]] == [str(q) for q in y[row]]
                kind, diff = ("identical", 0.0) if same else ("different", float("inf"))
            results.append(RowResult(out.name, row, kind, diff, _plain(x[row]), _plain(y[row])))
    return results, problems


def _plain(row: np.ndarray) -> List[Any]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in row.tolist()]
