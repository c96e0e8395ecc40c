"""``envserve env check-upgrade``: does the model answer the same in a newer environment?

The model is loaded twice, side by side, as the server would load it: in its current environment and in a
candidate one (a requirements file, ``python_env.yaml``, ``conda.yaml``, a tarball, an existing
environment, or ``server`` — the server's own, in process). The same inputs go through both — recorded
requests (V2 JSON lines, MLflow ``dataframe_split`` JSON, CSV, Parquet), the model's MLflow
``input_example``, or rows generated from its signature/metadata with a fixed seed — and every output is
compared row by row: identical, close (``rtol``/``atol``), or different. The report also holds what the
candidate warned at load (scikit-learn's ``InconsistentVersionWarning``, say), load time, latency and
memory of both sides, and the first differing inputs. A side that fails (cannot be built or loaded, or
refuses an input) is reported as such, with the other side's results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..environments import EnvironmentCache
from ..environments.source import with_environment
from ..errors import EnvserveError, SettingsError
from ..protocol.v2 import InferenceRequest, InferenceResponse, RequestInput, parse_inference_request
from ..settings.model import ModelSettings
from ..settings.server import ServerSettings
from .compare import compare_responses
from .handle import ModelHandle
from .placement import Placement

__all__ = ["Side", "UpgradeReport", "check_upgrade", "load_inputs"]

_WARNING = re.compile(r"\b[A-Z]\w*Warning\b")
_DTYPES = {"f": "FP64", "i": "INT64", "u": "UINT64", "b": "BOOL"}


# -- the inputs -----------------------------------------------------------------------------------------


def _frame_requests(frame: Any, inputs: List[Dict[str, Any]], batch: int) -> List[InferenceRequest]:
    """Requests of ``batch`` rows from a DataFrame: one input per column when the model's metadata names
    its columns, else one [rows, columns] tensor."""
    names = [i.get("name") for i in inputs]
    per_column = len(inputs) > 0 and all(str(c) in names for c in frame.columns)
    out = []
    for start in range(0, len(frame), batch):
        part = frame.iloc[start : start + batch]
        if per_column:
            tensors = [_tensor(str(c), part[c].to_numpy()) for c in part.columns]
        else:
            name = names[0] if len(names) == 1 and names[0] else "input-0"
            tensors = [_tensor(name, part.to_numpy())]
        out.append(InferenceRequest(tensors, id="row-%d" % start))
    return out


def _tensor(name: str, data: np.ndarray) -> RequestInput:
    datatype = _DTYPES.get(data.dtype.kind)
    if datatype is None:
        data = np.array([str(v) for v in data.ravel()], dtype=object).reshape(data.shape)
        datatype = "BYTES"
    return RequestInput(name, list(data.shape), datatype, data)


def load_inputs(
    path: Optional[str], settings: ModelSettings, metadata: Dict[str, Any], rows: int, seed: int, batch: int
) -> Tuple[List[InferenceRequest], str]:
    """The requests to replay and where they came from."""
    inputs = metadata.get("inputs") or []
    if path is not None:
        return _file_requests(path, inputs, batch), path
    folder = settings.model_path or settings.folder
    example = _input_example(folder)
    if example is not None:
        return _frame_requests(example, inputs, batch), "the model's MLflow input_example"
    if inputs:
        return _generated(
            inputs, rows, seed, batch
        ), "%d rows generated from the model's metadata (seed %d)" % (
            rows,
            seed,
        )
    raise SettingsError(
        "model %r has no input_example and no inputs in its metadata to generate rows from; give recorded "
        "requests with --inputs (V2 JSON lines, MLflow dataframe_split JSON, CSV or Parquet)" % settings.name
    )


def _file_requests(path: str, inputs: List[Dict[str, Any]], batch: int) -> List[InferenceRequest]:
    import pandas as pd

    try:
        if path.endswith((".csv", ".csv.gz")):
            return _frame_requests(pd.read_csv(path), inputs, batch)
        if path.endswith(".parquet"):
            return _frame_requests(pd.read_parquet(path), inputs, batch)
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        if path.endswith((".jsonl", ".ndjson")):
            docs = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            docs = [json.loads(text)]
    except (OSError, ValueError, ImportError) as exc:
        raise SettingsError("cannot read the inputs in %s: %s" % (path, exc)) from None
    out: List[InferenceRequest] = []
    for i, doc in enumerate(docs):
        if isinstance(doc, dict) and "dataframe_split" in doc:
            split = doc["dataframe_split"]
            out += _frame_requests(
                pd.DataFrame(split.get("data"), columns=split.get("columns")), inputs, batch
            )
        elif isinstance(doc, dict) and "dataframe_records" in doc:
            out += _frame_requests(pd.DataFrame(doc["dataframe_records"]), inputs, batch)
        else:
            try:
                request = parse_inference_request(doc)
            except EnvserveError as exc:
                raise SettingsError("%s, request %d: %s" % (path, i + 1, exc)) from None
            request.id = request.id or "request-%d" % (i + 1)
            out.append(request)
    return out


def _input_example(folder: Optional[str]) -> Any:
    if folder is None or not os.path.isfile(os.path.join(folder, "MLmodel")):
        return None
    from ..runtimes.mlflow import read_mlmodel

    info = read_mlmodel(folder).get("saved_input_example_info") or {}
    name = info.get("artifact_path")
    if not name or not os.path.isfile(os.path.join(folder, name)):
        return None
    import pandas as pd

    with open(os.path.join(folder, name)) as f:
        doc = json.load(f)
    if isinstance(doc, dict) and "dataframe_split" in doc:
        doc = doc["dataframe_split"]
    if isinstance(doc, dict) and "columns" in doc:
        return pd.DataFrame(doc.get("data"), columns=doc["columns"])
    if isinstance(doc, list):
        return pd.DataFrame(doc)
    return None


def _generated(inputs: List[Dict[str, Any]], rows: int, seed: int, batch: int) -> List[InferenceRequest]:
    rng = np.random.default_rng(seed)
    columns = {}
    for tensor in inputs:
        shape = [rows] + [d for d in (tensor.get("shape") or [-1])[1:]]
        if any(d < 0 for d in shape):
            raise SettingsError(
                "input %r has an open shape %s beyond rows" % (tensor.get("name"), tensor.get("shape"))
            )
        kind = tensor.get("datatype", "FP64")
        if kind.startswith("FP"):
            data: np.ndarray = rng.normal(size=shape)
        elif kind.startswith(("INT", "UINT")):
            data = rng.integers(0, 10, size=shape)
        elif kind == "BOOL":
            data = rng.random(size=shape) < 0.5
        else:
            data = np.array(rng.choice(["a", "b", "c"], size=shape), dtype=object)
        columns[tensor["name"]] = (kind, data)
    out = []
    for start in range(0, rows, batch):
        tensors = [
            RequestInput(
                name, [len(d[start : start + batch])] + list(d.shape[1:]), kind, d[start : start + batch]
            )
            for name, (kind, d) in columns.items()
        ]
        out.append(InferenceRequest(tensors, id="row-%d" % start))
    return out


# -- running both sides ---------------------------------------------------------------------------------


@dataclass
class Side:
    label: str
    environment: Optional[Dict[str, Any]] = None
    error: Optional[str] = None
    load_seconds: Optional[float] = None
    warnings: List[str] = field(default_factory=list)
    latencies: List[float] = field(default_factory=list)
    memory_mb: Optional[float] = None
    refused: int = 0

    def summary(self) -> Dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "label": self.label,
            "environment": self.environment,
            "error": self.error,
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
            "warnings": self.warnings,
            "latency_ms": {
                "median": round(1000 * lat[len(lat) // 2], 3),
                "p90": round(1000 * lat[min(len(lat) - 1, int(len(lat) * 0.9))], 3),
                "calls": len(lat),
            }
            if lat
            else None,
            "memory_mb": self.memory_mb,
            "refused_inputs": self.refused,
        }


@dataclass
class UpgradeReport:
    model: str
    candidate: str
    inputs: str
    rtol: float
    atol: float
    current: Side
    proposed: Side
    rows: int = 0
    identical: int = 0
    close: int = 0
    different: int = 0
    errors: List[Dict[str, Any]] = field(default_factory=list)
    differences: List[Dict[str, Any]] = field(default_factory=list)
    #: per compared row: (request id, row, largest absolute difference, class) for the plot
    row_diffs: List[Tuple[str, int, float, str]] = field(default_factory=list)
    max_abs_diff: float = 0.0

    @property
    def verdict(self) -> str:
        if self.current.error or self.proposed.error:
            return "failed"
        if self.errors:
            return "errors"
        if self.different:
            return "different"
        if self.close:
            return "close"
        return "identical" if self.rows else "nothing compared"

    @property
    def ok(self) -> bool:
        return self.verdict in ("identical", "close")

    def to_dict(self) -> Dict[str, Any]:
        return {
            "model": self.model,
            "candidate": self.candidate,
            "inputs": self.inputs,
            "verdict": self.verdict,
            "ok": self.ok,
            "tolerance": {"rtol": self.rtol, "atol": self.atol},
            "rows": {"compared": self.rows, "identical": self.identical, "close": self.close,
                     "different": self.different},
            "max_abs_diff": self.max_abs_diff,
            "first_differences": self.differences,
            "errors": self.errors,
            "current": self.current.summary(),
            "candidate_side": self.proposed.summary(),
        }  # fmt: skip


def _memory_mb(handle: Any) -> Optional[float]:
    pids = [w.pid for w in getattr(handle, "workers", []) if getattr(w, "pid", None)]
    if not pids:  # in process: this process's peak resident size
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    total = 0.0
    for pid in pids:
        try:
            with open("/proc/%d/status" % pid) as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0
        except (OSError, StopIteration, ValueError):
            return None
    return round(total, 1)


async def _load(side: Side, settings: ModelSettings, placement: Placement) -> Optional[ModelHandle]:
    try:
        source = placement.source(settings)
        handle = placement.make(settings, batching=False)
    except EnvserveError as exc:
        side.error = str(exc)
        return None
    if source is None:
        side.environment = {"kind": "server"}
    started = time.perf_counter()
    try:
        await handle.load()
    except Exception as exc:
        side.error = str(exc) if isinstance(exc, EnvserveError) else "%s: %s" % (type(exc).__name__, exc)
        with contextlib.suppress(Exception):
            await handle.unload()
        return None
    side.load_seconds = time.perf_counter() - started
    seen: List[str] = []
    for worker in getattr(handle, "workers", []):
        seen += [line.strip() for line in worker.output if _WARNING.search(line)]
    side.warnings = list(dict.fromkeys(seen))
    if source is not None:
        env = handle.describe().get("environment") or {}
        side.environment = {k: env.get(k) for k in ("kind", "python", "hash", "source")}
    return handle


def _copy(request: InferenceRequest) -> InferenceRequest:
    return InferenceRequest(
        [RequestInput(i.name, list(i.shape), i.datatype, i.data, dict(i.parameters)) for i in request.inputs],
        id=request.id,
        parameters=dict(request.parameters),
    )


async def _call(
    side: Side, handle: ModelHandle, request: InferenceRequest
) -> Tuple[Optional[InferenceResponse], str]:
    started = time.perf_counter()
    try:
        response = await handle.infer(_copy(request))
    except Exception as exc:
        side.refused += 1
        return None, str(exc) if isinstance(exc, EnvserveError) else "%s: %s" % (type(exc).__name__, exc)
    side.latencies.append(time.perf_counter() - started)
    return response, ""


def _error(report: UpgradeReport, request: InferenceRequest, side: str, message: str) -> None:
    report.errors.append({"request": request.id, "side": side, "error": message})


def _compare(
    report: UpgradeReport, request: InferenceRequest, a: InferenceResponse, b: InferenceResponse
) -> None:
    results, problems = compare_responses(a, b, report.rtol, report.atol)
    for problem in problems:
        _error(report, request, "candidate", problem)
    for r in results:
        report.rows += 1
        setattr(report, r.kind, getattr(report, r.kind) + 1)
        if r.diff != float("inf"):
            report.max_abs_diff = max(report.max_abs_diff, r.diff)
        report.row_diffs.append((str(request.id), r.row, r.diff, r.kind))
        if r.kind == "different" and len(report.differences) < 10:
            report.differences.append(
                {
                    "request": request.id,
                    "row": r.row,
                    "output": r.output,
                    "input": r.inputs(request),
                    "current": r.current,
                    "candidate": r.candidate,
                    "max_abs_diff": r.diff if r.diff != float("inf") else None,
                }
            )


async def check_upgrade(
    settings: ModelSettings,
    candidate: str,
    *,
    inputs: Optional[str] = None,
    rows: int = 64,
    seed: int = 0,
    batch: int = 32,
    rtol: float = 1e-7,
    atol: float = 0.0,
    cache: Optional[EnvironmentCache] = None,
) -> UpgradeReport:
    """Load ``settings``'s model in its environment and in ``candidate``, replay the inputs through both,
    and compare."""
    # one worker per side, no queue bound, no default environment, time for a slow first call
    server = ServerSettings(parallel_workers=1, inference_timeout=600.0, max_queue_size=0)
    placement = Placement(server, cache or EnvironmentCache())
    current, proposed = Side("current"), Side("candidate")
    report = UpgradeReport(settings.name, candidate, "", rtol, atol, current, proposed)
    handles: List[ModelHandle] = []
    try:
        try:
            other = with_environment(settings, candidate)
        except EnvserveError as exc:
            proposed.error = str(exc)
            other = None
        # one capture around both loads: two concurrent catch_warnings blocks restore each other's state
        # and lose what the other recorded. What Python warned in this process is the in-process side's
        # (a worker's warnings are lines of its output, read by _load).
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            first, second = await asyncio.gather(
                _load(current, settings, placement),
                _load(proposed, other, placement) if other is not None else _none(),
            )
        caught = ["%s: %s" % (w.category.__name__, w.message) for w in recorded]
        for side in (current, proposed):
            if side.environment == {"kind": "server"} and side.error is None:
                side.warnings = list(dict.fromkeys(caught + side.warnings))
        handles = [h for h in (first, second) if h is not None]
        loaded = first or second
        if loaded is None:
            return report
        requests, report.inputs = load_inputs(inputs, settings, loaded.metadata(), rows, seed, batch)
        for request in requests:
            a, error_a = (await _call(current, first, request)) if first is not None else (None, "")
            b, error_b = (await _call(proposed, second, request)) if second is not None else (None, "")
            if error_a:
                _error(report, request, "current", error_a)
            if error_b:
                _error(report, request, "candidate", error_b)
            if a is not None and b is not None:
                _compare(report, request, a, b)
        current.memory_mb = _memory_mb(first) if first is not None else None
        proposed.memory_mb = _memory_mb(second) if second is not None else None
        return report
    finally:
        for handle in handles:
            with contextlib.suppress(Exception):
                await handle.unload()
        placement.close()


async def _none() -> None:
    return None
