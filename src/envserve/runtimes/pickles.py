"""The restricted unpickler that loads model files: what a pickle may build is decided while it loads.

Unpickling calls whatever the file names: ``os.system``, ``builtins.eval`` and ``subprocess.Popen`` are
one ``GLOBAL`` + ``REDUCE`` away, and a scan before the load is a second parser an attacker can make
disagree with the first. So envserve does not scan and then load: :func:`load_pickle` *is* the load, a
subclass of the standard library's own (pure-Python) unpickler in which

- ``find_class`` resolves every global the file names — the module checked by name before it is
  imported, the dotted name walked through classes only, the object found checked by what it *is*:
  a **class** defined in an allowed package (its real ``__module__``, so a re-export of
  ``subprocess.Popen`` inside an allowed package is still ``subprocess``'s), or one of the **vetted
  reconstructors** listed in :data:`RECONSTRUCTORS` (numpy's ``_reconstruct``, pandas' block helpers,
  ...), some of them through a wrapper that checks their arguments. Functions, modules and anything
  else are refused, whatever package they are in;
- ``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``OBJ`` and ``INST`` call only what ``find_class`` granted in
  this load (never a callable built on the stack: ``attrgetter``/``partial`` gadgets have nothing to
  call), and ``BUILD`` gives state only to objects the pickle built — never to a class, a module, a
  function or a numpy dtype already in use;
- numpy dtypes are built whole from their pickled description and checked against the dtype numpy
  itself derives from it (item size, flags, field offsets): a forged dtype state that would make numpy
  read integers as object pointers is refused, not crashed on;
- joblib's array wrappers are read here, by the same loader: raw array bytes counted from the checked
  dtype and shape and read before anything is allocated, arrays of Python objects unpickled by a nested
  restricted unpickler (never ``pickle.load``), joblib's legacy wrappers (``NDArrayWrapper``,
  ``ZNDArrayWrapper``, which call ``np.load(..., allow_pickle=True)`` on companion files) refused; joblib
  itself need not be installed;
- joblib's zlib/gzip/bz2/xz/lzma compression is decoded on the way (lz4 and joblib < 0.10's formats are
  refused).

One parser, so nothing the loader reads differently from a checker. What is refused raises
:class:`~envserve.errors.UnsafePickle` naming the global (or what was wrong) and the file; nothing from
the file has been called at that point except allowed classes and reconstructors.

**Policy** (:class:`Policy`): the model's framework packages (scikit-learn and the estimators pickled
inside its pipelines), the types of numpy, scipy and pandas (never their I/O modules), the standard
library's value types, and the operator's server-wide ``pickle_allow`` (``"package.*"`` for the classes
of a package, ``"module.name"`` for one class or function). ``Policy(code=True)`` lets a pickle name
anything, as pickle itself allows (only the dtype and array checks remain): the operator's
``pickle_scan=false``, and an MLflow cloudpickle flavor (code by value) when the operator trusts model
code. A model's own settings can narrow the policy, never widen it (the server hands the runtime the
policy).

Worker import closure: standard library (numpy when the file holds arrays); Python 3.6+.
"""

import contextlib
import importlib
import io
import os
import pickle
import re
import sys
import types
import zlib
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from ..errors import UnsafePickle

__all__ = [
    "FRAMEWORKS",
    "RECONSTRUCTORS",
    "Policy",
    "load_pickle",
    "local_modules",
    "looks_like_pickle",
    "model_files",
    "restricted_loaders",
]

#: Framework packages whose classes a runtime's model files may hold, beside numpy/scipy/pandas types.
FRAMEWORKS = {
    "sklearn": ("sklearn.*", "xgboost.*", "lightgbm.*", "catboost.*", "imblearn.*"),
}  # fmt: skip

#: The standard library's value types any model pickle may build.
_STDLIB_CLASSES = [
    "builtins.set",
    "builtins.frozenset",
    "builtins.slice",
    "builtins.complex",
    "builtins.bytearray",
    "builtins.bytes",
    "builtins.object",
    "builtins.int",
    "builtins.float",
    "builtins.str",
    "builtins.list",
    "builtins.dict",
    "builtins.tuple",
    "builtins.bool",
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
]

#: Functions a pickle may call (module, name): how numpy, pandas and the standard library rebuild their
#: objects. Each was read for what it does with its arguments; the ones that could be steered (copyreg's
#: ``_reconstructor`` calls ``base.__new__``; numpy's ``_ufunc_reconstruct`` imports a module) go through
#: a wrapper that checks them first.
RECONSTRUCTORS = (
    ("copyreg", "_reconstructor"),
    ("_codecs", "encode"),  # bytes pickled by Python 2 / protocol < 3
    ("re", "_compile"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core", "_ufunc_reconstruct"),
    ("numpy._core", "_ufunc_reconstruct"),
    ("numpy.core._multiarray_umath", "_reconstruct"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random", "__RandomState_ctor"),
    ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.internals.blocks", "new_block"),
    ("pandas.core.internals.blocks", "_unpickle_block"),
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.period", "_new_PeriodIndex"),
    ("pandas.core.indexes.datetimes", "_new_DatetimeIndex"),
    ("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"),
    ("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle"),
    ("pandas._libs.tslibs.nattype", "__nat_unpickle"),
    ("pandas._libs.tslibs.offsets", "_unpickle"),
    ("pandas.core.arrays.categorical", "_unpickle"),
    ("pyarrow.lib", "_restore_array"),  # pandas' Arrow-backed strings; the array is validated whole
    ("pyarrow.lib", "type_for_alias"),
    ("pyarrow.lib", "py_buffer"),
    ("pyarrow.lib", "chunked_array"),
)

#: (``range`` is left out: ``list(range(10**12))`` would exhaust memory.)
_DATA_PACKAGES = ("numpy", "scipy", "pandas")
#: I/O, tooling and test modules of allowed packages: nothing there is ever built from a model file.
_DENIED_MODULES = re.compile(
    r"^(numpy\.(distutils|f2py|testing|ctypeslib|ma|lib\.(npyio|_npyio_impl|_datasource|format|utils))"
    r"|pandas\.(io|util|testing|_testing|plotting)|scipy\.(io|_lib|misc|datasets|weave)"
    r"|sklearn\.(datasets|utils\._testing|utils\.testing|externals\.joblib|utils\._joblib)"
    r"|pyarrow\.(fs|_fs|_s3fs|_gcsfs|_azurefs|_hdfs|hdfs|flight|_flight|dataset|_dataset\w*|parquet|_parquet\w*|orc|_orc"
    r"|csv|_csv|json|_json|feather|_feather|cffi|jvm|cuda|_cuda|substrait|_substrait|acero|_acero|interchange)"
    r"|[\w.]*\.tests?)(\.|$)"
)
_DENIED_CLASSES = {"memmap", "DataSource", "HDFStore", "ExcelWriter", "ExcelFile", "NpzFile", "TempMemmap"}
_COMPILED_FUNCTIONS = ("builtin_function_or_method", "cython_function_or_method", "fused_cython_function")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Python 2 / protocol < 3 names, as the standard unpickler maps them.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg", "exceptions": "builtins"}
#: joblib's array wrapper (a placeholder this loader reads itself) and its legacy ones (refused).
_JOBLIB_MODULES = ("joblib.numpy_pickle", "sklearn.externals.joblib.numpy_pickle")
_JOBLIB_LEGACY = {"NDArrayWrapper", "ZNDArrayWrapper"}


def _under(module: str, packages: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


class Policy:
    """What a model's pickles may build: allowed packages (their classes), exact names (a class, or a
    function the operator vouches for), the vetted reconstructors, and whether code pickled by value
    is trusted."""

    def __init__(self, rules: Iterable[str] = (), code: bool = False) -> None:
        self.exact: Set[str] = set(_STDLIB_CLASSES)
        self.packages: List[str] = list(_DATA_PACKAGES)
        self.code = code
        for rule in rules:
            if not isinstance(rule, str) or not rule.strip():
                raise UnsafePickle("pickle_allow entries must be non-empty strings, not %r" % (rule,))
            rule = rule.strip()
            if rule.endswith(".*"):
                self.packages.append(rule[:-2])
            else:
                self.exact.add(rule)
        self.reconstructors = {"%s.%s" % pair for pair in RECONSTRUCTORS}

    @classmethod
    def for_model(cls, frameworks: Sequence[str], rules: Iterable[str] = (), code: bool = False) -> "Policy":
        """The policy for a model of ``frameworks`` (a key of :data:`FRAMEWORKS`, or a package name)
        with the operator's ``rules``."""
        out: List[str] = []
        for framework in frameworks:
            out.extend(FRAMEWORKS.get(framework, (framework + ".*",)))
        return cls(out + list(rules), code=code)

    def may_import(self, module: str) -> bool:
        """Whether ``module`` may be imported to resolve a global (checked by name, before importing)."""
        if _DENIED_MODULES.match(module):
            return False
        if module in _JOBLIB_MODULES:
            return True
        return (
            _under(module, self.packages)
            or any(e.rpartition(".")[0] == module for e in self.exact)
            or any(r.rpartition(".")[0] == module for r in self.reconstructors)
        )

    def allows_name(self, full: str) -> bool:
        """A dotted name as a rule names it (for formats that check names themselves, as skops does)."""
        if self.code or full in self.exact:
            return True
        module = full.rpartition(".")[0]
        return not _DENIED_MODULES.match(module) and _under(module, self.packages)

    def allows_class(self, cls: type) -> bool:
        """A class by what it is: where it is defined (``__module__``), not where it was found."""
        module = getattr(cls, "__module__", None)
        qualname = getattr(cls, "__qualname__", getattr(cls, "__name__", ""))
        if not isinstance(module, str) or not isinstance(qualname, str):
            return False
        if "%s.%s" % (module, qualname) in self.exact:
            return True
        if _DENIED_MODULES.match(module) or qualname.rpartition(".")[2] in _DENIED_CLASSES:
            return False
        return _under(module, self.packages)


class _Unsafe(Exception):
    """Raised inside the load with what was refused; turned into UnsafePickle naming the file."""


# -- reading the file (decompressing on the way) ------------------------------------------------------

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


# -- the loader -----------------------------------------------------------------------------------------


class _ArrayWrapper:
    """joblib's ``NumpyArrayWrapper`` as this loader reads it: its state says how the raw array bytes
    that follow are laid out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


class _PendingDtype:
    """``numpy.dtype(code, align, copy)`` before its ``BUILD``: the dtype is made once its state is
    known, from both, and checked (memo entries that hold the placeholder are replaced then)."""

    __slots__ = ("args", "keys")

    def __init__(self, args: Any) -> None:
        self.args = args
        self.keys: List[Any] = []


class _Memo(dict):  # type: ignore[type-arg]
    def __setitem__(self, key: Any, value: Any) -> None:
        if type(value) is _PendingDtype:
            value.keys.append(key)
        dict.__setitem__(self, key, value)


_MAX_DEPTH = 4  # arrays of objects nested in joblib files (joblib writes one level)
_MAX_ARRAY_BYTES = 1 << 40
_CHUNK_READ = 1 << 24
_CODE_LIKE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def _kind(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return "a module"
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return "a function"
    if isinstance(obj, type):
        return "a class defined in %s" % getattr(obj, "__module__", "?")
    return "a %s object" % type(obj).__name__


#: The standard library's pure-Python unpickler (its dispatch table can be changed, the C one's cannot).
_PyUnpickler: Any = pickle._Unpickler


class _Restricted(_PyUnpickler):  # type: ignore[misc]
    """The standard library's pure-Python unpickler with every call it makes decided by :class:`Policy`."""

    dispatch = dict(_PyUnpickler.dispatch)

    def __init__(self, reader: Any, policy: Policy, depth: int = 0) -> None:
        super().__init__(reader)
        self.memo = _Memo()
        self._reader = reader
        self._policy = policy
        self._depth = depth
        self._granted: Dict[int, Any] = {}
        self._np: Any = None

    # -- globals ---------------------------------------------------------------------------------------

    def find_class(self, module: Any, name: Any) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise _Unsafe("imports a global whose name is not a plain string (%r, %r)" % (module, name))
        if self.proto < 3 and module in _PY2_MODULES:
            module = _PY2_MODULES[module]
        full = "%s.%s" % (module, name)
        parts = name.split(".")
        if not all(_IDENTIFIER.match(p) for p in parts + module.split(".")):
            raise _Unsafe("would import %r, which is not a plain dotted name" % full)
        if name in _JOBLIB_LEGACY and module.startswith(("joblib.", "sklearn.externals.joblib.")):
            raise _Unsafe(
                "would import %s (joblib's legacy array format, which loads companion files with "
                "np.load(allow_pickle=True))" % full,
                full,
            )
        if module in _JOBLIB_MODULES:
            if name == "NumpyArrayWrapper" and self._depth == 0:
                return self._grant(_ArrayWrapper)
            raise _Unsafe("would import %s (not an array wrapper this loader reads)" % full, full)
        if self._policy.code:  # the operator trusts model code: a pickle may name what it likes
            return self._grant(super().find_class(module, name))
        if not self._policy.may_import(module):
            raise _Unsafe("would import %s" % full, full)
        obj: Any = importlib.import_module(module)
        for i, part in enumerate(parts):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise _Unsafe("would import %s, which does not exist" % full, full) from None
            if i < len(parts) - 1 and not isinstance(obj, type):
                raise _Unsafe(
                    "would import %s, reached through %s (only nested classes may be named this way)"
                    % (full, _kind(obj)),
                    full,
                )
        return self._grant(self._judge(full, module, name, obj))

    def _judge(self, full: str, module: str, name: str, obj: Any) -> Any:
        """What ``find_class`` hands back for ``obj``, or refuse it."""
        policy = self._policy
        if module.split(".")[0] == "numpy":
            self._numpy(required=False)  # so that numpy.dtype is built by _dtype
        if full in policy.reconstructors or (full in policy.exact and not isinstance(obj, type)):
            if not callable(obj):
                raise _Unsafe("would import %s (%s, not a reconstructor)" % (full, _kind(obj)), full)
            return self._wrapped(full, obj)
        if isinstance(obj, type):
            if policy.allows_class(obj):
                return obj
            raise _Unsafe("would import %s (%s)" % (full, _kind(obj)), full)
        np = self._numpy(required=False)
        if np is not None and isinstance(obj, np.ufunc) and _under(module, ("numpy", "scipy.special")):
            return obj  # element-wise arithmetic (FunctionTransformer(np.log1p) and the like)
        if (
            name.startswith("__pyx_unpickle_")
            and type(obj).__name__ in _COMPILED_FUNCTIONS
            and _under(getattr(obj, "__module__", None) or module, policy.packages)
            and not _DENIED_MODULES.match(module)
        ):
            return obj  # Cython's generated unpickler of one extension type of an allowed package
        raise _Unsafe("would import %s (%s)" % (full, _kind(obj)), full)

    def _grant(self, obj: Any) -> Any:
        self._granted[id(obj)] = obj
        return obj

    def _granted_callable(self, func: Any, op: str) -> None:
        if self._policy.code:
            return
        if self._granted.get(id(func)) is not func:
            raise _Unsafe(
                "would call %s with %s, which the pickle did not import as an allowed class or "
                "reconstructor" % (_kind(func), op)
            )

    def _check_args(self, func: Any, args: Any) -> None:
        """Classes and functions handed to a call must be ones the pickle imported and was granted."""
        if self._policy.code:
            return
        if not isinstance(args, tuple):
            raise _Unsafe("calls %s with arguments that are not a tuple" % _kind(func))
        for arg in args:
            if isinstance(arg, _CODE_LIKE) and self._granted.get(id(arg)) is not arg:
                raise _Unsafe(
                    "passes %s to %s, which the pickle did not import as allowed" % (_kind(arg), _kind(func))
                )
        if func in (bytes, bytearray) and args and isinstance(args[0], int):
            raise _Unsafe(
                "calls %s(%d): a buffer of that size, not data from the file" % (func.__name__, args[0])
            )

    def _wrapped(self, full: str, func: Any) -> Any:
        if full == "copyreg._reconstructor":
            granted = self._granted

            def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
                for t in (cls, base):
                    if granted.get(id(t)) is not t or not isinstance(t, type):
                        raise _Unsafe("reconstructs with %s, not a class the pickle imported" % _kind(t))
                return func(cls, base, state)

            return _reconstructor
        if full.endswith("._reconstruct") and full.startswith("numpy."):

            def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
                count = 1
                for d in shape if isinstance(shape, tuple) else (shape,):
                    count *= int(d)
                if count > 1:  # numpy pickles reconstruct an empty array and BUILD its data
                    raise _Unsafe("reconstructs an array of %d elements with no data" % count)
                return func(subtype, shape, dtype)

            return _reconstruct
        if full in ("pyarrow.lib._restore_array", "pyarrow.lib.chunked_array"):

            def _validated(*args: Any) -> Any:
                # Arrow trusts the buffers, lengths and offsets it is given; a full validation reads
                # them within bounds and refuses what would make later reads leave them
                made = func(*args)
                try:
                    made.validate(full=True)
                except Exception as exc:
                    raise _Unsafe(
                        "holds an Arrow array whose buffers do not hold what it says: %s" % exc
                    ) from None
                return made

            return _validated
        if full.endswith("._ufunc_reconstruct"):
            np = self._numpy()

            def _ufunc_reconstruct(module: Any, name: Any) -> Any:
                if module not in ("numpy", "numpy.core.umath", "numpy._core.umath", "scipy.special"):
                    raise _Unsafe("reconstructs a ufunc from module %r" % (module,))
                found = getattr(importlib.import_module(module), str(name), None)
                if not isinstance(found, np.ufunc):
                    raise _Unsafe("reconstructs %s.%s, which is not a ufunc" % (module, name))
                return found

            return _ufunc_reconstruct
        return func

    def _numpy(self, required: bool = True) -> Any:
        if self._np is None:
            try:
                import numpy

                self._np = numpy
            except ImportError:
                if required:
                    raise _Unsafe("holds numpy arrays, and numpy is not installed") from None
        return self._np

    # -- calls -----------------------------------------------------------------------------------------

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        func = stack[-1]
        self._granted_callable(func, "REDUCE")
        self._check_args(func, args)
        np = self._np
        if np is not None and isinstance(func, type) and issubclass(func, np.dtype):
            stack[-1] = _PendingDtype(args)
            return
        stack[-1] = func(*args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self._new(cls, args, {})

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(kwargs, dict):
            raise _Unsafe("calls NEWOBJ_EX with keyword arguments that are not a dict")
        self._new(cls, args, kwargs)

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _new(self, cls: Any, args: Any, kwargs: Dict[str, Any]) -> None:
        self._granted_callable(cls, "NEWOBJ")
        if not isinstance(cls, type):
            raise _Unsafe("calls NEWOBJ on %s, not a class" % _kind(cls))
        self._check_args(cls, args)
        self._check_args(cls, tuple(kwargs.values()))
        self.append(cls.__new__(cls, *args, **kwargs))

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ, as the standard unpickler
        self._granted_callable(klass, "INST/OBJ")
        self._check_args(klass, tuple(args))
        made: Any = klass
        if args or not isinstance(made, type) or hasattr(made, "__getinitargs__"):
            self.append(made(*args))
        else:
            self.append(made.__new__(made))  # type: ignore[call-overload]

    # -- state -----------------------------------------------------------------------------------------

    def load_build(self) -> None:
        stack = self.stack
        inst = stack[-2]
        if type(inst) is _PendingDtype:
            state = stack.pop()
            dtype = self._dtype(inst.args, state)
            stack[-1] = dtype
            for key in inst.keys:
                if self.memo.get(key) is inst:
                    dict.__setitem__(self.memo, key, dtype)
            return
        if type(inst) is _ArrayWrapper:
            state = stack.pop()
            stack[-1] = self._array(state)
            return
        np = self._np
        if self._policy.code:
            pass
        elif isinstance(inst, _CODE_LIKE) or (np is not None and isinstance(inst, np.dtype)):
            raise _Unsafe(
                "gives state to %s (only objects the pickle built may be given state)" % _kind(inst)
            )
        if np is not None and isinstance(inst, np.ndarray):
            _check_array_state(np, inst, stack[-1])
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def _dtype(self, args: Any, state: Any) -> Any:
        np = self._numpy()
        if not isinstance(args, tuple) or not 1 <= len(args) <= 3:
            raise _Unsafe("builds a numpy dtype from %r" % (args,))
        code = args[0]
        if not isinstance(code, (str, bytes)) and self._granted.get(id(code)) is not code:
            raise _Unsafe("builds a numpy dtype from %s" % _kind(code))
        if not all(a in (0, 1) and isinstance(a, int) for a in args[1:]):  # numpy < 1.20 wrote 0 and 1
            raise _Unsafe("builds a numpy dtype with flags %r" % (args[1:],))
        dtype = _make_dtype(np, code, state, 0)
        _check_dtype(np, dtype, 0)
        return dtype

    def _array(self, state: Any) -> Any:
        """The array a joblib wrapper stands for, read from the bytes that follow it."""
        np = self._numpy()
        if not isinstance(state, dict):
            raise _Unsafe("holds an array wrapper without its state")
        subclass, shape, order, dtype = (state.get(k) for k in ("subclass", "shape", "order", "dtype"))
        if not isinstance(dtype, np.dtype):
            raise _Unsafe("holds an array wrapper whose dtype is %s" % _kind(dtype))
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _Unsafe("holds an array wrapper with shape %r" % (shape,))
        if order not in ("C", "F"):
            raise _Unsafe("holds an array wrapper with order %r" % (order,))
        if not (
            subclass in (np.ndarray, np.memmap)
            or (
                isinstance(subclass, type)
                and issubclass(subclass, np.ndarray)
                and self._granted.get(id(subclass)) is subclass
            )
        ):
            raise _Unsafe("holds an array wrapper of %s" % _kind(subclass))
        frame = getattr(getattr(self, "_unframer", None), "current_frame", None)
        if frame is not None and frame.tell() != len(frame.getbuffer()):
            raise _Unsafe("holds array data inside a pickle frame (joblib writes it after the frame)")
        if dtype.hasobject:
            if self._depth + 1 >= _MAX_DEPTH:
                raise _Unsafe("holds arrays of objects nested more than %d deep" % _MAX_DEPTH)
            array = _Restricted(self._reader, self._policy, self._depth + 1).load()
            if not isinstance(array, np.ndarray):
                raise _Unsafe("holds an array of objects that unpickles as %s" % _kind(array))
            return array
        count = 1
        for d in shape:
            count *= d
        size = count * dtype.itemsize
        if size > _MAX_ARRAY_BYTES or (dtype.itemsize == 0 and count > 0):
            raise _Unsafe("holds an array of %d elements of %d bytes" % (count, dtype.itemsize))
        if state.get("numpy_array_alignment_bytes") is not None:  # joblib 1.2+: its padding
            pad = self._reader.read(1)
            if len(pad) != 1 or len(self._reader.read(pad[0])) != pad[0]:
                raise EOFError("the file ends inside an array")
        data = bytearray()
        while len(data) < size:
            chunk = self._reader.read(min(_CHUNK_READ, size - len(data)))
            if not chunk:
                raise EOFError("the file ends inside an array")
            data += chunk
        array = np.frombuffer(data, dtype=dtype, count=count) if count else np.empty(0, dtype=dtype)
        array = array.reshape(shape[::-1]).transpose() if order == "F" else array.reshape(shape)
        if subclass not in (np.ndarray, np.memmap):
            array = array.view(subclass)
        return array


def _check_array_state(np: Any, array: Any, state: Any) -> None:
    """What ``ndarray.__setstate__`` would be given, checked before numpy reads it: numpy trusts the
    element count of an object array's list (a short list crashes it), and an array subclass may set its
    own state in ways numpy does not check."""
    if type(array).__setstate__ is not np.ndarray.__setstate__:
        raise _Unsafe("gives state to a %s, an array subclass with a state of its own" % type(array).__name__)
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise _Unsafe("holds an array with a malformed state")
    shape, dtype, fortran, data = state[-4:]
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _Unsafe("holds an array of shape %r" % (shape,))
    if not isinstance(dtype, np.dtype) or not isinstance(fortran, (bool, int)):
        raise _Unsafe("holds an array whose dtype is %s" % _kind(dtype))
    count = 1
    for d in shape:
        count *= d
    if dtype.hasobject:
        if not isinstance(data, list) or len(data) != count:
            raise _Unsafe("holds an array of %d objects whose data is not a list of %d" % (count, count))
    elif not isinstance(data, (bytes, bytearray)) or len(data) != count * dtype.itemsize:
        raise _Unsafe(
            "holds an array of %d bytes whose data is not that many bytes" % (count * dtype.itemsize)
        )


def _make_dtype(np: Any, code: Any, state: Any, depth: int) -> Any:
    """A numpy dtype from its pickled code and state, made with numpy's public constructors from checked
    values — never by ``dtype.__setstate__``, which trusts what it is given (a forged state can set the
    flag that makes numpy read integers as object pointers, or crash it outright)."""
    if state is None:
        return np.dtype(code)
    if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
        raise _Unsafe("holds a numpy dtype state this loader does not read (numpy before 1.7 wrote it?)")
    endian, subarray, names, fields, elsize, _alignment, flags = state[1:8]
    metadata = state[8] if len(state) == 9 else None
    if endian not in ("<", ">", "|", "=") or not isinstance(elsize, int) or not isinstance(flags, int):
        raise _Unsafe("holds a numpy dtype with a malformed state")
    if subarray is not None:
        if not (isinstance(subarray, tuple) and len(subarray) == 2 and isinstance(subarray[0], np.dtype)):
            raise _Unsafe("holds a numpy sub-array dtype with a malformed state")
        base, shape = subarray
        _check_dtype(np, base, depth + 1)
        if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise _Unsafe("holds a numpy sub-array dtype of shape %r" % (shape,))
        dtype = np.dtype((base, shape))
    elif names is not None:
        if not (
            isinstance(names, tuple) and all(isinstance(n, str) for n in names) and isinstance(fields, dict)
        ):
            raise _Unsafe("holds a structured numpy dtype with a malformed state")
        spec: Dict[str, Any] = {"names": list(names), "formats": [], "offsets": [], "titles": []}
        for name in names:
            entry = fields.get(name)
            if not (isinstance(entry, tuple) and 2 <= len(entry) <= 3 and isinstance(entry[0], np.dtype)):
                raise _Unsafe("holds a structured numpy dtype whose field %r is malformed" % name)
            if not isinstance(entry[1], int) or entry[1] < 0:
                raise _Unsafe(
                    "holds a structured numpy dtype whose field %r has offset %r" % (name, entry[1])
                )
            _check_dtype(np, entry[0], depth + 1)
            spec["formats"].append(entry[0])
            spec["offsets"].append(entry[1])
            spec["titles"].append(entry[2] if len(entry) == 3 else None)
        if not any(t is not None for t in spec["titles"]):
            del spec["titles"]
        if elsize > 0:
            spec["itemsize"] = elsize
        dtype = np.dtype(spec, align=bool(flags & 0x80))
    else:
        if not isinstance(code, str):
            code = code.decode("ascii") if isinstance(code, bytes) else code
            if not isinstance(code, str):
                return np.dtype(code)  # a numpy scalar type the pickle imported (granted)
        kind = code.lstrip("<>|=")[:1]
        if kind in ("S", "a", "V") and elsize > 0:
            code = "%s%d" % (kind, elsize)
        elif kind == "U" and elsize > 0:
            code = "U%d" % (elsize // 4)
        elif kind in ("M", "m") and isinstance(metadata, tuple) and len(metadata) == 2:
            unit = metadata[1]
            if not (
                isinstance(unit, tuple)
                and len(unit) == 4
                and isinstance(unit[0], bytes)
                and isinstance(unit[1], int)
                and unit[1] > 0
            ):
                raise _Unsafe("holds a numpy datetime dtype with unit %r" % (unit,))
            code = "%s8[%s%s]" % (kind, unit[1] if unit[1] != 1 else "", unit[0].decode("ascii"))
            metadata = metadata[0]
        dtype = np.dtype(code)
        if endian in ("<", ">") and dtype.byteorder != "|":
            dtype = dtype.newbyteorder(endian)
    if isinstance(metadata, dict) and metadata:
        dtype = np.dtype(dtype, metadata=dict(metadata))
    if bool(flags & 0x01) != dtype.hasobject:  # the rest of the flags may differ between numpy versions
        raise _Unsafe(
            "holds a numpy dtype %s whose state says it %s Python objects, where numpy's own %s (flags %d, "
            "numpy's %d)"
            % (
                dtype.str,
                "holds" if flags & 0x01 else "holds no",
                "does" if dtype.hasobject else "does not",
                flags,
                dtype.flags,
            )
        )
    return dtype


def _check_dtype(np: Any, dtype: Any, depth: int) -> None:
    """Refuse a dtype whose pickled state disagrees with what numpy derives from its description (a
    forged item size, flags or field offsets would make numpy read memory it does not own)."""
    if not isinstance(dtype, np.dtype) or depth > 32:
        raise _Unsafe("holds a numpy dtype nested in %s" % _kind(dtype))
    if dtype.names is not None:
        formats, offsets, titles = [], [], []
        for name in dtype.names:
            entry = dtype.fields[name]
            sub, offset = entry[0], entry[1]
            _check_dtype(np, sub, depth + 1)
            if not isinstance(offset, int) or offset < 0 or offset + sub.itemsize > dtype.itemsize:
                raise _Unsafe(
                    "a numpy dtype whose field %r lies outside its %d bytes" % (name, dtype.itemsize)
                )
            formats.append(sub)
            offsets.append(offset)
            titles.append(entry[2] if len(entry) > 2 else None)
        spec: Dict[str, Any] = {
            "names": list(dtype.names),
            "formats": formats,
            "offsets": offsets,
            "itemsize": dtype.itemsize,
        }
        if any(t is not None for t in titles):
            spec["titles"] = titles
        canonical = np.dtype(spec, align=bool(dtype.isalignedstruct))
    elif dtype.subdtype is not None:
        base, shape = dtype.subdtype
        _check_dtype(np, base, depth + 1)
        canonical = np.dtype((base, shape))
    else:
        canonical = np.dtype(dtype.str)
    derived, stated = (
        (canonical.itemsize, canonical.flags, canonical.kind),
        (dtype.itemsize, dtype.flags, dtype.kind),
    )
    if derived != stated:
        raise _Unsafe(
            "holds a numpy dtype %s whose state says %d bytes and flags %d, where numpy's own is %d "
            "bytes and flags %d" % (dtype.str, stated[0], stated[1], derived[0], derived[1])
        )


def load_pickle(path: str, policy: Policy) -> Any:
    """Unpickle ``path`` (a pickle of any protocol, cloudpickle's, or a joblib file, compressed or not)
    under ``policy``.

    Raises :class:`~envserve.errors.UnsafePickle` naming the file and what was refused (nothing from the
    file but allowed classes and reconstructors has run), or when the file is truncated or corrupt."""
    try:
        with open(path, "rb") as f:
            return _Restricted(_open(f, path), policy).load()
    except Exception as exc:
        _refuse(path, exc)


def _load_file(f: Any, policy: Policy, name: str = "") -> Any:
    name = name or str(getattr(f, "name", "a pickle"))
    try:
        return _Restricted(_open(f, name), policy).load()
    except Exception as exc:
        _refuse(name, exc)


def _refuse(path: str, error: Exception) -> Any:
    """Raise the UnsafePickle that says why ``path`` was not loaded."""
    try:
        raise error
    except _Unsafe as exc:
        message, name = exc.args[0], (exc.args[1] if len(exc.args) > 1 else None)
        hint = (
            '; if the file is trusted, the operator can allow %s (or its package as "package.*") in the '
            "server's pickle_allow (ENVSERVE_PICKLE_ALLOW)" % name
            if name
            else ""
        )
        raise UnsafePickle(
            "%s %s: the pickle policy does not allow it, and nothing was loaded%s" % (path, message, hint)
        ) from None
    except UnsafePickle:
        raise
    except OSError as exc:
        raise UnsafePickle("cannot read %s: %s" % (path, exc)) from None
    except ImportError as exc:
        raise UnsafePickle(
            "%s needs %s, which this environment does not have: %s" % (path, getattr(exc, "name", "?"), exc)
        ) from None
    except Exception as exc:  # what the file made the unpickler or an allowed class raise
        raise UnsafePickle(
            "%s could not be unpickled (truncated, corrupt, or made for other versions of its libraries): "
            "%s: %s; nothing was loaded" % (path, type(exc).__name__, exc)
        ) from None


@contextlib.contextmanager
def restricted_loaders(policy: Policy) -> Iterator[None]:
    """For the time of a framework's or a user's own load: ``pickle.load``/``loads``, ``joblib.load`` and
    ``cloudpickle.load``/``loads`` are this loader under ``policy`` (what the code called them through
    when it ran; a reference taken earlier with ``from pickle import load`` is its own)."""

    def load(file: Any, *args: Any, **kwargs: Any) -> Any:
        return _load_file(file, policy)

    def loads(data: Any, *args: Any, **kwargs: Any) -> Any:
        return _load_file(io.BytesIO(bytes(data)), policy, "pickled bytes")

    def joblib_load(filename: Any, *args: Any, **kwargs: Any) -> Any:
        if hasattr(filename, "read"):
            return _load_file(filename, policy)
        return load_pickle(os.fspath(filename), policy)

    patches: List[Tuple[Any, str, Any]] = [(pickle, "load", load), (pickle, "loads", loads)]
    replacements: List[Tuple[str, str, Any]] = [
        ("joblib", "load", joblib_load),
        ("cloudpickle", "load", load),
        ("cloudpickle", "loads", loads),
    ]
    for module_name, name, replacement in replacements:
        module = sys.modules.get(module_name)
        if module is None:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
        patches.append((module, name, replacement))
    saved = [(m, n, getattr(m, n)) for m, n, _ in patches]
    for module, name, replacement in patches:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


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
