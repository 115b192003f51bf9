"""Reading weights and checkpoints without running anything a file says.

`paddle.load` is plain pickle: a file can name any callable (os.system, eval, ...) and have it called.
What `paddle.save` itself writes (protocol 4, Paddle 2.6 and 3.x alike, checked with pickletools) names
only these globals: collections.OrderedDict (state dicts), builtins.tuple (each tensor is reduced to
tuple((name, ndarray)), which paddle.load turns back into a tensor), and numpy's array machinery
(multiarray._reconstruct, ndarray, dtype, and multiarray.scalar for numpy numbers); numpy 1 writes them
under numpy.core, numpy 2 under numpy._core. No eval, no Paddle class. The unpickler below resolves exactly
those names and refuses every other one before anything is called, so a crafted file stops with one line.
What it built is then checked once per object (check_tree: a budget of values counted at each reference and
of depth, tensor dtypes only, string keys) before anything walks it, so a few hundred bytes cannot stand for
more than memory holds. Published weights are better taken as .safetensors (a JSON header and raw bytes).
"""
import collections
import pickle

import numpy as np

from .errors import UserError

try:  # numpy 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray


# What paddle.load can make a tensor of (paddle.to_tensor's own list): numbers of a fixed size. Everything else an
# array can hold (structured records, text, objects, void or zero-size items) is no weight, and is refused.
TENSOR_DTYPES = frozenset(np.dtype(t) for t in ("bool", "float16", "float32", "float64", "int8", "int16", "int32",
                                                 "int64", "uint8", "uint16"))
# A checkpoint of the largest model holds a few thousand containers and values, nested 5 deep. The unpickler
# shares objects through its memo, so a few hundred bytes can stand for 2**48 of them (a list of two references
# to the previous list, 48 times): they are counted as often as they are referenced, without expanding anything.
MAX_NODES = 1_000_000
MAX_DEPTH = 32


def _numeric(dtype):
    """dtype as paddle.load would take it: one of TENSOR_DTYPES (in any byte order), else None."""
    if not isinstance(dtype, np.dtype) or dtype.fields is not None or dtype.subdtype is not None:
        return None
    native = dtype.newbyteorder("=")
    return native if native in TENSOR_DTYPES else None


def _plain_dtype(*args):
    """numpy.dtype as a file may call it, but never an object dtype (its items would be arbitrary objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("numpy.dtype(object)")
    return dtype


class _NdarrayName:
    """What `numpy.ndarray` resolves to: a name that _reconstruct takes, but that builds nothing when called (the
    class itself would allocate any shape a file asks for, uninitialised)."""


def _reconstruct(subtype, shape, dtype):
    """numpy's pickled arrays start as _reconstruct(ndarray, (0,), b'b') and get their data from BUILD after."""
    if subtype is not _NdarrayName or not isinstance(shape, tuple) or shape != (0,):
        raise pickle.UnpicklingError("numpy array reconstruction other than numpy's own")
    return _multiarray._reconstruct(np.ndarray, shape, dtype)


_ARRAYS = {"_reconstruct": _reconstruct, "scalar": _multiarray.scalar}  # check_tree judges the scalars made
ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
           ("builtins", "tuple"): tuple,
           ("numpy", "ndarray"): _NdarrayName,
           ("numpy", "dtype"): _plain_dtype,
           **{(module, name): f for module in ("numpy.core.multiarray", "numpy._core.multiarray")
              for name, f in _ARRAYS.items()}}


NAME_TABLE = "StructuredToParameterName@@"


class Refused(pickle.UnpicklingError):
    def __init__(self, what):
        super().__init__(what)
        self.what = what


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise Refused(f"{module}.{name}") from None


def _where(keys):
    return "".join(f"[{k!r}]" for k in keys) or "the top level"


def check_tree(obj):
    """None if `obj` (an unpickled file) is something a weights file or checkpoint can hold, else why not, in a few
    words: over MAX_NODES values counting shared ones at each reference, deeper than MAX_DEPTH, a container that
    holds itself, a dict key that is not a string, an array or numpy scalar of no tensor dtype, or anything but
    dicts, lists, tuples, strings, bytes, numbers and None (what paddle.save writes).

    Each object is visited once (memoised by id): the time and memory are those of the file, not of what its
    shared references expand to."""
    sizes = {}

    def size(o, keys):
        if isinstance(o, (np.ndarray, np.generic)):
            if _numeric(o.dtype) is None or o.dtype.itemsize == 0:
                raise ValueError(f"{_where(keys)} is a numpy {'array' if isinstance(o, np.ndarray) else 'scalar'} "
                                 f"of dtype {o.dtype.str!r} ({o.dtype}), which is no tensor's")
            return 1
        if not isinstance(o, (dict, list, tuple)):
            if o is not None and not isinstance(o, (str, bytes, int, float)):
                raise ValueError(f"{_where(keys)} is a {type(o).__name__}")
            return 1
        known = sizes.get(id(o), 0)
        if known is None:
            raise ValueError(f"{_where(keys)} contains itself")
        if known:
            return known
        if len(keys) >= MAX_DEPTH:
            raise ValueError(f"it nests containers over {MAX_DEPTH} deep (at {_where(keys[:4])}...)")
        sizes[id(o)] = None
        total = 1
        if isinstance(o, dict):
            for k, v in o.items():
                if not isinstance(k, str):
                    raise ValueError(f"{_where(keys)} has a key {k!r} ({type(k).__name__}), not a string")
                total += size(v, keys + (k,))
        else:
            for i, v in enumerate(o):
                total += size(v, keys + (i,))
        if total > MAX_NODES:
            raise ValueError(f"it holds over {MAX_NODES:,} values once its shared parts are counted at each "
                             "reference")
        sizes[id(o)] = total
        return total

    try:
        size(obj, ())
    except ValueError as e:
        return str(e)
    return None


def _is_saved_tensor(obj):
    """paddle.save's form of a tensor: (name, ndarray) (paddle.load's own test for the same thing)."""
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray)


def _walk(obj, is_tensor, tensor):
    """obj with every value is_tensor(value) replaced by tensor(value), through dicts, lists and tuples; each object
    once (a shared one gives one shared result), so a tree check_tree passed is walked in its own size."""
    done = {}

    def walk(o):
        if id(o) in done:
            return done[id(o)]
        if is_tensor(o):
            out = tensor(o)
        elif isinstance(o, dict):
            out = type(o)((k, walk(v)) for k, v in o.items())
        elif isinstance(o, (list, tuple)):
            out = type(o)(walk(v) for v in o)
        else:
            return o
        done[id(o)] = out
        return out

    return walk(obj)


def _native(array):
    """paddle.to_tensor takes native byte order only; a big-endian array converts exactly."""
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def _as_paddle_load_returns(obj, to_tensor):
    """paddle.load's rules for where the tensors are. A top-level state dict comes with paddle.save's
    {structured name: parameter name} table: its arrays are the tensors, and the table is dropped. Else
    every (name, ndarray) pair is a tensor, or, in files holding none (Paddle 2.0's), every ndarray."""
    if isinstance(obj, dict) and isinstance(obj.get(NAME_TABLE), dict):
        table = obj.pop(NAME_TABLE)
        return type(obj)((k, to_tensor(_native(v)) if k in table and isinstance(v, np.ndarray) else v)
                         for k, v in obj.items())
    pairs = []
    _walk(obj, _is_saved_tensor, pairs.append)
    if pairs:
        return _walk(obj, _is_saved_tensor, lambda pair: to_tensor(_native(pair[1])))
    return _walk(obj, lambda v: isinstance(v, np.ndarray), lambda v: to_tensor(_native(v)))


def load_paddle_file(f, path):
    """What paddle.load(path) returns for a file paddle.save wrote (open as binary `f`), executing nothing.

    Tensors come back as paddle Tensors, as from paddle.load. A file that names any other global, is not a
    pickle at all, or holds what check_tree refuses (over budget, no tensor's dtype, non-string keys) is a
    UserError naming the file and what is wrong.
    """
    try:
        obj = _AllowListUnpickler(f).load()
    except Refused as e:
        raise UserError(f"{path}: refused to load: it names {e.what}, which no Paddle weights file or checkpoint "
                        "holds (unpickling it could run code); take weights as .safetensors") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except MemoryError:
        raise UserError(f"cannot read {path}: it declares an object larger than this machine's memory (a damaged or "
                        "crafted file)") from None
    except Exception as e:  # truncated or foreign bytes raise many types; the user needs the path
        raise UserError(f"cannot read {path} as Paddle weights or checkpoint ({type(e).__name__}: {e})") from None
    problem = check_tree(obj)
    if problem:
        raise UserError(f"{path}: refused to load: {problem}; no Paddle weights file or checkpoint holds that")
    import paddle  # here, so that the allow-list itself can be read without Paddle
    return _as_paddle_load_returns(obj, paddle.to_tensor)
