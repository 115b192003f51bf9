"""Reading weights and checkpoints without running anything a file says.

`paddle.load` is plain pickle: a file can name any callable (os.system, eval, ...) and have it called.
What `paddle.save` itself writes (protocol 4, Paddle 2.6 and 3.x alike, checked with pickletools) names
only these globals: collections.OrderedDict (state dicts), builtins.tuple (each tensor is reduced to
tuple((name, ndarray)), which paddle.load turns back into a tensor), and numpy's array machinery
(multiarray._reconstruct, ndarray, dtype, and multiarray.scalar for numpy numbers); numpy 1 writes them
under numpy.core, numpy 2 under numpy._core. No eval, no Paddle class. The unpickler below resolves exactly
those names and refuses every other one before anything is called, so a crafted file stops with one line.
Published weights are better taken as .safetensors (a JSON header and raw bytes; nothing to execute).
"""
import collections
import pickle

import numpy as np

from .errors import UserError

try:  # numpy 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray


def _plain_dtype(*args):
    """numpy.dtype as a file may call it, but never an object dtype (its items would be arbitrary objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("numpy.dtype(object)")
    return dtype


_ARRAYS = {"_reconstruct": _multiarray._reconstruct, "scalar": _multiarray.scalar}
ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
           ("builtins", "tuple"): tuple,
           ("numpy", "ndarray"): np.ndarray,
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


def _is_saved_tensor(obj):
    """paddle.save's form of a tensor: (name, ndarray) (paddle.load's own test for the same thing)."""
    return isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray)


def _walk(obj, is_tensor, tensor):
    """obj with every value is_tensor(value) replaced by tensor(value), through dicts, lists and tuples."""
    if is_tensor(obj):
        return tensor(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _walk(v, is_tensor, tensor)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_walk(v, is_tensor, tensor) for v in obj)
    return obj


def _as_paddle_load_returns(obj, to_tensor):
    """paddle.load's rules for where the tensors are. A top-level state dict comes with paddle.save's
    {structured name: parameter name} table: its arrays are the tensors, and the table is dropped. Else
    every (name, ndarray) pair is a tensor, or, in files holding none (Paddle 2.0's), every ndarray."""
    if isinstance(obj, dict) and isinstance(obj.get(NAME_TABLE), dict):
        table = obj.pop(NAME_TABLE)
        return type(obj)((k, to_tensor(v) if k in table and isinstance(v, np.ndarray) else v) for k, v in obj.items())
    pairs = []
    _walk(obj, _is_saved_tensor, pairs.append)
    if pairs:
        return _walk(obj, _is_saved_tensor, lambda pair: to_tensor(pair[1]))
    return _walk(obj, lambda v: isinstance(v, np.ndarray), to_tensor)


def load_paddle_file(f, path):
    """What paddle.load(path) returns for a file paddle.save wrote (open as binary `f`), executing nothing.

    Tensors come back as paddle Tensors, as from paddle.load. A file that names any other global, or
    is not a pickle at all, is a UserError naming the file (and the refused global).
    """
    try:
        obj = _AllowListUnpickler(f).load()
    except Refused as e:
        raise UserError(f"{path}: refused to load: it names {e.what}, which no Paddle weights file or checkpoint "
                        "holds (unpickling it could run code); take weights as .safetensors") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except Exception as e:  # truncated or foreign bytes raise many types; the user needs the path
        raise UserError(f"cannot read {path} as Paddle weights or checkpoint ({type(e).__name__}: {e})") from None
    import paddle  # here, so that the allow-list itself can be read without Paddle
    try:
        return _as_paddle_load_returns(obj, paddle.to_tensor)
    except RecursionError:
        raise UserError(f"cannot read {path}: nested too deeply for a weights file or checkpoint") from None
