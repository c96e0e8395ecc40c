"""Pickle scanning before load: which globals a pickle would import, read from its opcodes, run nothing.

Unpickling calls whatever the file names: ``os.system``, ``builtins.eval``, ``subprocess.Popen`` are one
``GLOBAL`` + ``REDUCE`` away. Before envserve unpickles a model file (in the server or in a worker) it walks
the file's opcodes with :func:`pickletools.genops` and a small stack machine that only *records*: every
global the pickle would import (``GLOBAL``, ``STACK_GLOBAL``, ``INST``) is checked against an allow-list,
and anything else makes the model UNAVAILABLE naming the global and the file. Nothing is imported or
called while scanning.

Covered formats: plain pickles (protocols 0-5, as written by pickle, cloudpickle and MLflow), joblib files
(the raw array bytes joblib writes after each ``NumpyArrayWrapper`` are skipped by reading the wrapper's
shape and dtype) and joblib's zlib/gzip/bz2/xz/lzma compression. A file that is truncated, corrupt, or uses
what cannot be checked (the copyreg extension registry) is refused too: what cannot be read cannot be
trusted, and the message says which it was.

The default allow-list (:data:`DEFAULT_ALLOW`) holds the model's framework packages (scikit-learn and the
estimators commonly pickled inside its pipelines) and *types* of numpy, scipy and pandas with their
unpickling helpers, never their I/O modules. ``pickle_allow`` (model parameter, and a server-wide setting)
extends it: ``"package.*"`` allows everything under a package, ``"module.name"`` one global. It bounds what
a pickle can call to trusted classes; it is not a sandbox for a model whose own code is pickled
(cloudpickle'd functions), which must be allowed explicitly (``"cloudpickle.*"``).

Worker import closure: standard library only; Python 3.6+.
"""

import contextlib
import os
import pickletools
import re
import zlib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..errors import UnsafePickle

__all__ = [
    "DEFAULT_ALLOW",
    "FRAMEWORKS",
    "AllowList",
    "check_pickle",
    "local_modules",
    "looks_like_pickle",
    "model_files",
    "pickle_globals",
]

#: Framework packages allowed for a runtime's model files, beside numpy/scipy/pandas types.
FRAMEWORKS = {
    "sklearn": ("sklearn.*", "joblib.numpy_pickle.*", "sklearn.externals.joblib.numpy_pickle.*",
                "xgboost.*", "lightgbm.*"),
}  # fmt: skip

_SAFE_BUILTINS = "set frozenset slice range complex bytearray bytes object int float str list dict tuple bool"
_SAFE_BUILTINS_LIST = _SAFE_BUILTINS.split()
#: Globals any model pickle may import: containers and value types of the standard library.
DEFAULT_ALLOW = tuple(
    ["builtins.%s" % n for n in _SAFE_BUILTINS_LIST]
    + ["__builtin__.%s" % n for n in _SAFE_BUILTINS_LIST]  # written by Python 2
    + [
        "copyreg._reconstructor",
        "copy_reg._reconstructor",
        "_codecs.encode",
        "collections.OrderedDict",
        "collections.defaultdict",
        "collections.Counter",
        "collections.deque",
        "datetime.date",
        "datetime.datetime",
        "datetime.time",
        "datetime.timedelta",
        "datetime.timezone",
        "decimal.Decimal",
        "fractions.Fraction",
        "uuid.UUID",
        "functools.partial",
        "re._compile",
        "operator.itemgetter",
        "operator.attrgetter",
        "_operator.itemgetter",
        "_operator.attrgetter",
        # pandas' Arrow-backed strings
        "pyarrow.lib._restore_array",
        "pyarrow.lib.type_for_alias",
        "pyarrow.lib.py_buffer",
    ]
)

# numpy, scipy and pandas: their types and unpickling helpers are allowed, their I/O and tooling are not
_DATA_PACKAGES = ("numpy", "scipy", "pandas")
_DATA_DENIED = re.compile(
    r"^(numpy\.(distutils|f2py|testing|ctypeslib|lib\.(npyio|_npyio_impl|_datasource|format|utils))"
    r"|pandas\.(io|util|testing|_testing)|scipy\.(io|_lib|misc|datasets|weave))(\.|$)"
)
_DATA_HELPERS = {
    "_reconstruct",  # numpy.core.multiarray._reconstruct (ndarray.__reduce__)
    "scalar",  # numpy.core.multiarray.scalar (numpy scalars)
    "_frombuffer",
    "__randomstate_ctor",
    "__bit_generator_ctor",
    "__generator_ctor",
    "_mareconstruct",
    "_unpickle_block",
    "new_block",
    "_new_Index",
    "_unpickle_timestamp",
    "_timedelta_unpickle",
    "__nat_unpickle",
    "_new_PeriodIndex",
    "_new_DatetimeIndex",
}
_NUMPY_TYPE_NAMES = (
    "dtype ndarray matrix recarray record generic number integer signedinteger unsignedinteger "
    "inexact floating complexfloating flexible character bool_ bool int8 int16 int32 int64 uint8 "
    "uint16 uint32 uint64 intc uintc intp uintp int_ uint longlong ulonglong short ushort byte ubyte "
    "half single double longdouble float16 float32 float64 float96 float128 float_ complex64 "
    "complex128 complex192 complex256 csingle cdouble clongdouble complex_ str_ unicode_ bytes_ "
    "string_ object_ void datetime64 timedelta64"
)
_NUMPY_TYPES = set(_NUMPY_TYPE_NAMES.split())
_DENIED_TYPES = {"memmap", "DataSource", "HDFStore", "ExcelWriter", "ExcelFile"}


def _data_type(module: str, name: str) -> bool:
    """Whether ``module.name`` is a numpy/scipy/pandas type or unpickling helper (by name: nothing is
    imported to tell)."""
    if module.split(".", 1)[0] not in _DATA_PACKAGES or _DATA_DENIED.match(module):
        return False
    last = name.rsplit(".", 1)[-1]
    if last in _DENIED_TYPES:
        return False
    if last in _DATA_HELPERS or last.startswith("__pyx_unpickle_") or last[:1].isupper():
        return True
    if module.startswith("numpy"):
        return last in _NUMPY_TYPES
    if module.startswith("scipy.sparse"):
        return last.endswith(("_matrix", "_array"))
    if module.startswith("scipy.stats"):
        return last.startswith("rv_") or last.endswith(("_gen", "_frozen"))
    return False


class AllowList:
    """Rules ``"package.*"`` (everything under a package) and ``"module.name"`` (one global), plus the
    numpy/scipy/pandas types."""

    def __init__(self, rules: Iterable[str] = ()) -> None:
        self.exact: Set[str] = set()
        self.packages: List[str] = []
        for rule in list(DEFAULT_ALLOW) + list(rules):
            if not isinstance(rule, str) or not rule.strip():
                raise UnsafePickle("pickle_allow entries must be non-empty strings, not %r" % (rule,))
            rule = rule.strip()
            if rule.endswith(".*"):
                self.packages.append(rule[:-2])
            else:
                self.exact.add(rule)

    @classmethod
    def for_model(cls, frameworks: Sequence[str], extra: Any) -> "AllowList":
        rules: List[str] = []
        for framework in frameworks:
            rules.extend(FRAMEWORKS.get(framework, (framework + ".*",)))
        if extra is not None:
            if isinstance(extra, str):
                extra = [extra]
            if not isinstance(extra, (list, tuple)):
                raise UnsafePickle("pickle_allow must be a list of strings, not %r" % (extra,))
            rules.extend(extra)
        return cls(rules)

    def allows(self, module: str, name: str) -> bool:
        if "%s.%s" % (module, name) in self.exact:
            return True
        if any(module == p or module.startswith(p + ".") for p in self.packages):
            return True
        return _data_type(module, name)


# -- reading the file -----------------------------------------------------------------------------------

_CHUNK = 1 << 20


class _Reader:
    """read/readline/tell over a file, decompressing on the way when it is compressed (what genops and
    the joblib skipping need; tell() counts decompressed bytes). Reads are served from a buffer by offset:
    genops reads a byte or a few at a time."""

    def __init__(self, f: Any, decompressor: Any) -> None:
        self.f = f
        self.d = decompressor
        self.buffer = b""
        self.offset = 0  # of the next unread byte in buffer
        self.consumed = 0  # bytes of the stream before buffer
        self.eof = False

    def _fill(self, need: int) -> None:
        """Make ``need`` unread bytes available, or as many as the stream has."""
        if len(self.buffer) - self.offset >= need:
            return
        parts = [self.buffer[self.offset :]]
        have = len(parts[0])
        self.consumed += self.offset
        while have < need and not self.eof:
            raw = self.f.read(max(_CHUNK, need - have) if self.d is None else _CHUNK)
            if not raw:
                self.eof = True
                if self.d is not None and hasattr(self.d, "flush"):
                    parts.append(self.d.flush())
                    have += len(parts[-1])
                break
            if self.d is None:
                chunk = raw
            else:
                try:
                    chunk = self.d.decompress(raw)
                except Exception as exc:  # zlib.error, OSError, EOFError, lzma.LZMAError
                    raise ValueError("the compressed stream is corrupt: %s" % exc) from None
            parts.append(chunk)
            have += len(chunk)
        self.buffer, self.offset = b"".join(parts), 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = 1 << 62
        self._fill(min(n, 1 << 31))
        out = self.buffer[self.offset : self.offset + n]
        self.offset += len(out)
        return out

    def readline(self) -> bytes:
        while True:
            cut = self.buffer.find(b"\n", self.offset)
            if cut >= 0:
                return self.read(cut + 1 - self.offset)
            if self.eof:
                return self.read(len(self.buffer) - self.offset)
            self._fill(len(self.buffer) - self.offset + _CHUNK)

    def skip(self, n: int) -> int:
        """Read past n bytes without keeping them; how many there were."""
        skipped = 0
        while skipped < n:
            got = len(self.read(min(n - skipped, _CHUNK)))
            if not got:
                break
            skipped += got
        return skipped

    def tell(self) -> int:
        return self.consumed + self.offset


def _open(f: Any, path: str) -> _Reader:
    head = f.read(6)
    f.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return _Reader(f, zlib.decompressobj(16 + zlib.MAX_WBITS))
    try:  # optional in a Python built without libbz2/liblzma (a model's environment may be one)
        if head.startswith(b"BZh"):
            import bz2

            return _Reader(f, bz2.BZ2Decompressor())
        if head.startswith(b"\xfd7zXZ\x00") or head.startswith(b"\x5d\x00\x00"):
            import lzma

            return _Reader(f, lzma.LZMADecompressor())
    except ImportError as exc:
        raise UnsafePickle(
            "%s is compressed with a format this Python cannot read (%s)" % (path, exc)
        ) from None
    if head[:1] == b"\x78":  # joblib's zlib compression
        return _Reader(f, zlib.decompressobj())
    if head.startswith(b"\x04\x22\x4d\x18"):
        raise UnsafePickle("%s is lz4-compressed, which the pickle scan cannot read" % path)
    return _Reader(f, None)


def looks_like_pickle(path: str) -> bool:
    """A pickle by its name (.pkl, .pickle, .joblib, .sav, .cloudpickle) or by its first bytes."""
    if path.endswith((".pkl", ".pickle", ".joblib", ".sav", ".cloudpickle", ".pkl.gz", ".joblib.gz")):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


# -- the opcode walk ------------------------------------------------------------------------------------


class _Global:
    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Obj:
    """What REDUCE/NEWOBJ/INST/OBJ would build: the callable and its arguments, and BUILD's state."""

    __slots__ = ("args", "func", "state")

    def __init__(self, func: Any, args: Any) -> None:
        self.func, self.args, self.state = func, args, None


class _Opaque:
    """A value the scan does not keep (large strings, buffers, persistent ids)."""


_MARK = object()
_OPAQUE = _Opaque()
_PUSH = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "STRING", "BINSTRING",
    "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE",
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "FLOAT", "BINFLOAT",
}  # fmt: skip
_WRAPPERS = {"NumpyArrayWrapper"}


def _small(value: Any) -> Any:
    if isinstance(value, (str, bytes, bytearray)) and len(value) > 4096:
        return _OPAQUE
    return value


def _pop_mark(stack: List[Any]) -> List[Any]:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise ValueError("MARK expected on the stack")


def _set_items(target: Any, pairs: Sequence[Any]) -> None:
    if isinstance(target, dict):
        for k, v in zip(pairs[0::2], pairs[1::2]):
            with contextlib.suppress(TypeError):  # an unhashable key the scan does not need
                target[k] = v


def _array_bytes(state: Any) -> Tuple[int, bool]:
    """Bytes of array data joblib wrote after a NumpyArrayWrapper, and whether padding precedes them;
    -1 for an array of Python objects, which joblib writes as a pickle of its own."""
    if not isinstance(state, dict):
        raise ValueError("a NumpyArrayWrapper without its state")
    shape, dtype = state.get("shape"), state.get("dtype")
    if _has_objects(dtype):
        return -1, False
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError("a NumpyArrayWrapper with shape %r" % (shape,))
    count = 1
    for d in shape:
        count *= d
    itemsize = _itemsize(dtype)
    padded = state.get("numpy_array_alignment_bytes") is not None
    return count * itemsize, padded


def _has_objects(dtype: Any) -> bool:
    if not isinstance(dtype, _Obj) or not isinstance(dtype.args, tuple) or not dtype.args:
        return False
    code, state = dtype.args[0], dtype.state
    flags = state[7] if isinstance(state, tuple) and len(state) >= 8 and isinstance(state[7], int) else 0
    return (isinstance(code, str) and code.lstrip("<>|=").startswith("O")) or bool(flags & 1)


def _itemsize(dtype: Any) -> int:
    """The item size of a pickled numpy dtype: ``dtype(code, False, True)`` with its BUILD state."""
    if not isinstance(dtype, _Obj) or not isinstance(dtype.args, tuple) or not dtype.args:
        raise ValueError("a NumpyArrayWrapper whose dtype cannot be read")
    state = dtype.state
    if isinstance(state, tuple) and len(state) >= 6 and isinstance(state[5], int) and state[5] > 0:
        return state[5]  # flexible and structured dtypes carry their size
    code = dtype.args[0]
    match = re.match(r"^[<>|=]?([a-zA-Z])(\d+)$", code) if isinstance(code, str) else None
    if match is None:
        raise ValueError("a NumpyArrayWrapper of dtype %r" % (code,))
    kind, size = match.group(1), int(match.group(2))
    return size * 4 if kind == "U" else size  # numpy spells unicode in characters, 4 bytes each


def pickle_globals(path: str) -> List[Tuple[str, str]]:
    """Every (module, name) the pickle in ``path`` would import, in order, running nothing.

    Raises :class:`UnsafePickle` when the file cannot be read as a pickle (truncated, corrupt) or uses
    what cannot be checked."""
    found: List[Tuple[str, str]] = []
    try:
        with open(path, "rb") as f:
            reader = _open(f, path)
            _walk(reader, found)
    except UnsafePickle:
        raise
    except OSError as exc:
        raise UnsafePickle("cannot read %s: %s" % (path, exc)) from None
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise UnsafePickle(
            "%s is not a complete pickle (truncated or corrupt?): %s; nothing was loaded" % (path, exc or "")
        ) from None
    return found


def _walk(reader: _Reader, found: List[Tuple[str, str]], joblib: bool = True) -> None:
    stack: List[Any] = []
    memo: Dict[Any, Any] = {}
    arg: Any
    for opcode, arg, _pos in pickletools.genops(reader):  # type: ignore[arg-type]
        op = opcode.name
        if op in _PUSH:
            stack.append(_small(arg))
        elif op == "NONE":
            stack.append(None)
        elif op in ("NEWTRUE", "NEWFALSE"):
            stack.append(op == "NEWTRUE")
        elif op == "EMPTY_LIST":
            stack.append([])
        elif op == "EMPTY_TUPLE":
            stack.append(())
        elif op == "EMPTY_DICT":
            stack.append({})
        elif op == "EMPTY_SET":
            stack.append([])
        elif op == "MARK":
            stack.append(_MARK)
        elif op == "POP":
            stack.pop()
        elif op == "POP_MARK":
            _pop_mark(stack)
        elif op == "DUP":
            stack.append(stack[-1])
        elif op == "APPEND":
            value = stack.pop()
            if isinstance(stack[-1], list):
                stack[-1].append(value)
        elif op in ("APPENDS", "ADDITEMS"):
            items = _pop_mark(stack)
            if isinstance(stack[-1], list):
                stack[-1].extend(items)
        elif op in ("LIST", "FROZENSET"):
            stack.append(_pop_mark(stack))
        elif op == "TUPLE":
            stack.append(tuple(_pop_mark(stack)))
        elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(op[-1])
            top = tuple(stack[-n:])
            if len(top) != n:
                raise IndexError("stack underflow")
            del stack[-n:]
            stack.append(top)
        elif op == "DICT":
            items = _pop_mark(stack)
            target: Dict[Any, Any] = {}
            _set_items(target, items)
            stack.append(target)
        elif op == "SETITEM":
            value = stack.pop()
            key = stack.pop()
            _set_items(stack[-1], [key, value])
        elif op == "SETITEMS":
            items = _pop_mark(stack)
            _set_items(stack[-1], items)
        elif op in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif op in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif op == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif op in ("GLOBAL", "INST"):
            module, name = arg.split(" ", 1)
            found.append((module, name))
            if op == "GLOBAL":
                stack.append(_Global(module, name))
            else:
                stack.append(_Obj(_Global(module, name), tuple(_pop_mark(stack))))
        elif op == "STACK_GLOBAL":
            name = stack.pop()
            module = stack.pop()
            if not isinstance(module, str) or not isinstance(name, str):
                raise UnsafePickle(
                    "imports a global whose name is not a plain string (%r, %r)" % (module, name)
                )
            found.append((module, name))
            stack.append(_Global(module, name))
        elif op == "OBJ":
            items = _pop_mark(stack)
            stack.append(_Obj(items[0], tuple(items[1:])))
        elif op in ("NEWOBJ", "REDUCE"):
            args = stack.pop()
            stack.append(_Obj(stack.pop(), args))
        elif op == "NEWOBJ_EX":
            stack.pop()  # kwargs
            args = stack.pop()
            stack.append(_Obj(stack.pop(), args))
        elif op == "BUILD":
            state = stack.pop()
            top = stack[-1]
            if isinstance(top, _Obj):
                top.state = state
                func = top.func
                if joblib and isinstance(func, _Global) and func.name in _WRAPPERS:
                    size, padded = _array_bytes(state)
                    if size < 0:  # the objects follow as a pickle of their own, read by pickle.load
                        _walk(reader, found, joblib=False)
                        continue
                    if padded:  # joblib 1.2+: one byte saying how much padding follows, then the padding
                        pad = reader.read(1)
                        if len(pad) != 1 or reader.skip(pad[0]) != pad[0]:
                            raise ValueError("the file ends inside an array")
                    if reader.skip(size) != size:
                        raise ValueError("the file ends inside an array")
        elif op in ("EXT1", "EXT2", "EXT4"):
            raise UnsafePickle(
                "imports through the copyreg extension registry (code %s), which cannot be checked" % arg
            )
        elif op == "PERSID":
            stack.append(_OPAQUE)
        elif op == "BINPERSID":
            stack.pop()
            stack.append(_OPAQUE)
        elif op == "NEXT_BUFFER":
            stack.append(_OPAQUE)
        elif op in ("READONLY_BUFFER", "PROTO", "FRAME", "STOP"):
            pass
        else:  # pragma: no cover - a future protocol's opcode
            raise UnsafePickle("uses opcode %s, which the scan does not know" % op)


def check_pickle(path: str, allow: AllowList) -> List[Tuple[str, str]]:
    """Refuse ``path`` (:class:`UnsafePickle`, naming the global and the file) unless every global its
    pickle would import is allowed; the globals found otherwise."""
    try:
        found = pickle_globals(path)
    except UnsafePickle as exc:
        message = str(exc)
        if not message.startswith(path):
            message = "%s %s" % (path, message)
        raise UnsafePickle(message) from None
    refused = []
    for module, name in found:
        if not allow.allows(module, name) and (module, name) not in refused:
            refused.append((module, name))
    if refused:
        names = ", ".join("%s.%s" % g for g in refused[:5]) + (" and more" if len(refused) > 5 else "")
        raise UnsafePickle(
            "%s would import %s when unpickled, which the pickle allow-list does not include; nothing was "
            'loaded. If the file is trusted, add the global (or its package as "package.*") to the model\'s '
            "parameters.pickle_allow" % (path, names)
        )
    return found


def model_files(folder: Optional[str]) -> List[str]:
    """The pickle files in a model folder (its own code and environments excluded), sorted."""
    if folder is None or not os.path.isdir(folder):
        return []
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "code"))
        for name in files:
            path = os.path.join(root, name)
            if os.path.isfile(path) and looks_like_pickle(path):
                out.append(path)
    return sorted(out)


def local_modules(folder: Optional[str]) -> List[str]:
    """The modules and packages a model folder holds (its own code, whose classes its pickles may name)."""
    if folder is None or not os.path.isdir(folder):
        return []
    names = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.endswith(".py") and os.path.isfile(path):
            names.append(entry[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            names.append(entry)
    return names
