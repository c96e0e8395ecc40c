"""MLflow's scoring-server format (``POST /invocations``) <-> V2, for drop-in use of ``mlflow models serve``
clients.

JSON bodies: ``dataframe_split`` (``{"columns": [...], "data": [[...]]}``), ``dataframe_records``
(``[{col: value}, ...]``), ``instances`` and ``inputs`` (tensors: a list, or a dict of named lists); CSV
bodies (``text/csv``, first line the header). Responses: ``{"predictions": ...}``.

Standard library and numpy only.
"""

import csv
import io
from typing import Any, Dict, List

import numpy as np

from ..errors import InvalidRequest
from .datatypes import datatype_of
from .v2 import InferenceResponse, shaped

__all__ = ["from_csv", "from_json", "to_predictions"]


def _column(name: str, values: List[Any]) -> Dict[str, Any]:
    try:
        arr = np.asarray(values)
    except ValueError:
        raise InvalidRequest("column %r is ragged" % name) from None
    if arr.dtype.kind in "USO":
        if any(v is None for v in values):
            raise InvalidRequest("column %r has null values; fill them before scoring" % name)
        return {
            "name": name,
            "shape": [len(values)],
            "datatype": "BYTES",
            "data": [str(v) for v in values],
            "parameters": {"content_type": "str"},
        }
    return {"name": name, "shape": [len(values)], "datatype": datatype_of(arr.dtype), "data": arr.tolist()}


def _frame(columns: List[str], rows: List[List[Any]]) -> Dict[str, Any]:
    if not rows:
        raise InvalidRequest("the input has no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise InvalidRequest(
                "row %d has %s values; %d columns were declared"
                % (i, len(row) if isinstance(row, list) else "no list of", len(columns))
            )
    inputs = [_column(str(c), [row[j] for row in rows]) for j, c in enumerate(columns)]
    return {"inputs": inputs, "parameters": {"content_type": "pd"}}


def _tensor(name: str, value: Any) -> Dict[str, Any]:
    try:
        arr = np.asarray(value)
    except ValueError:
        raise InvalidRequest("tensor %r is ragged" % name) from None
    if arr.dtype == object:
        raise InvalidRequest("tensor %r mixes types" % name)
    if arr.dtype.kind in "US":
        return {
            "name": name,
            "shape": list(arr.shape),
            "datatype": "BYTES",
            "data": arr.ravel().tolist(),
            "parameters": {"content_type": "str"},
        }
    return {
        "name": name,
        "shape": list(arr.shape),
        "datatype": datatype_of(arr.dtype),
        "data": arr.ravel().tolist(),
    }


def from_json(doc: Any) -> Dict[str, Any]:
    if not isinstance(doc, dict):
        raise InvalidRequest(
            "the body must be a JSON object with one of dataframe_split, dataframe_records, instances, inputs"
        )
    keys = [k for k in ("dataframe_split", "dataframe_records", "instances", "inputs") if k in doc]
    if len(keys) != 1:
        raise InvalidRequest(
            "the body must have exactly one of dataframe_split, dataframe_records, instances, "
            "inputs (found %s)" % (", ".join(keys) or "none")
        )
    key = keys[0]
    value = doc[key]
    if key == "dataframe_split":
        if not isinstance(value, dict) or "data" not in value:
            raise InvalidRequest("dataframe_split needs 'columns' and 'data'")
        rows = value["data"]
        columns = value.get("columns") or [str(i) for i in range(len(rows[0]) if rows else 0)]
        return _frame(columns, rows)
    if key == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise InvalidRequest("dataframe_records must be a list of objects")
        names: List[str] = []
        for record in value:
            names += [c for c in record if c not in names]
        return _frame(names, [[r.get(c) for c in names] for r in value])
    if isinstance(value, dict):
        return {"inputs": [_tensor(str(k), v) for k, v in value.items()]}
    return {"inputs": [_tensor("input", value)]}


def from_csv(text: str) -> Dict[str, Any]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidRequest("the CSV body is empty") from None
    rows: List[List[Any]] = []
    for line in reader:
        if not line:
            continue
        rows.append([_number(v) for v in line])
    return _frame(header, rows)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def to_predictions(response: InferenceResponse) -> Dict[str, Any]:
    def values(out: Any) -> Any:
        data = out.data
        if out.datatype == "BYTES":
            data = np.asarray(
                [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in data.ravel().tolist()],
                dtype=object,
            )
        return shaped(np.asarray(data), out.shape).tolist()

    if len(response.outputs) == 1:
        return {"predictions": values(response.outputs[0])}
    columns = {o.name: values(o) for o in response.outputs}
    lengths = {len(v) if isinstance(v, list) else 1 for v in columns.values()}
    if len(lengths) == 1:  # a DataFrame-like answer: one record per row, as MLflow returns it
        n = lengths.pop()
        return {
            "predictions": [
                {
                    k: (v[i][0] if isinstance(v[i], list) and len(v[i]) == 1 else v[i])
                    for k, v in columns.items()
                }
                for i in range(n)
            ]
        }
    return {"predictions": columns}
