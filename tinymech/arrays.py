"""Torch tensors in and out, when asked: tm.set_array_type("torch"), or `with tm.array_type("torch"):`.

tinymech computes with numpy. With the switch on, the public entry points (ENTRY_POINTS below,
wrapped once when the package is imported) convert at the user's boundary, and only there:

- coming in, a torch tensor becomes a numpy array over the same memory (a copy only for what
  numpy cannot share: bfloat16, a GPU, a sparse layout), inside lists, tuples and dicts too; a
  function of the user's (a hook, a metric, a names filter) is called with tensors and what it
  returns (or edits in place) comes back;
- going out, a numpy array becomes a tensor over the same memory (a read-only array, such as
  memory-mapped weights, is copied: a tensor cannot be read-only), a float (a loss) a 0-d
  tensor, inside tuples, lists, dicts, dict views and the generators and context managers returned.

A call under way marks itself in a context variable, so what tinymech calls of its own entry
points inside it sees numpy. torch is imported when the switch is set to "torch", never otherwise.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import types

import numpy as np

import tinymech

from . import analysis, model_tree, patching, sae, utils
from .cache import ActivationCache
from .errors import InvalidInputError
from .factored_matrix import FactoredMatrix
from .io.tokenizer import Tokenizer
from .model import LayerStack, Model
from .model_helpers import ModelHelpers
from .sae.sae import SAE, WEIGHTS

KINDS = ("numpy", "torch")
ARRAYS, NUMPY = "arrays", "numpy"  # what an entry point's results become: tensors, or left as they are

_global_kind = "numpy"
_scoped_kind: contextvars.ContextVar[str | None] = contextvars.ContextVar("tinymech_array_type", default=None)
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("tinymech_inside_call", default=False)
_torch = None  # the torch module, once the switch asked for it

_MARK = "__tinymech_entry__"  # set on a wrapped entry point
_MAX_DEPTH = 5  # how deep conversion looks into nested lists, tuples and dicts
_PLAIN = (int, float, str, bool, type(None))  # what conversion skips at once (long lists of ids)
_DICT_VALUES, _DICT_ITEMS = type({}.values()), type({}.items())


# ---- the switch --------------------------------------------------------------------------------

def _checked(kind) -> str:
    global _torch
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidInputError(f"the array type is 'numpy' or 'torch', not {kind!r}")
    if kind == "torch" and _torch is None:
        try:
            import torch
        except (ImportError, OSError) as e:
            raise InvalidInputError(f"the array type 'torch' needs torch, which cannot be imported ({e}): "
                                    "pip install torch") from None
        _torch = torch
    return kind


def set_array_type(kind: str) -> None:
    """"torch": tinymech's functions return torch tensors (over the arrays' memory) and take them;
    "numpy" (the default): numpy arrays. For every thread; `with array_type(kind):` for a block."""
    global _global_kind
    _global_kind = _checked(kind)


def get_array_type() -> str:
    """The array type in force here: "numpy" or "torch"."""
    return _scoped_kind.get() or _global_kind


@contextlib.contextmanager
def _scoped(kind: str):
    token = _scoped_kind.set(kind)
    try:
        yield kind
    finally:
        _scoped_kind.reset(token)


def array_type(kind: str):
    """A context manager: within the block (in this thread), the array type is `kind`."""
    return _scoped(_checked(kind))


def _converting() -> bool:
    """At the user's boundary with the switch on (not inside a call of tinymech's)."""
    return (_scoped_kind.get() or _global_kind) == "torch" and not _inside.get()


@contextlib.contextmanager
def _inside_call(inside: bool = True):
    token = _inside.set(inside)
    try:
        yield
    finally:
        _inside.reset(token)


# ---- conversion ----------------------------------------------------------------------------------

def _tensor_to_array(t):
    """A torch tensor as a numpy array over its memory where numpy can share it; 0-d as a numpy scalar."""
    torch = _torch
    try:
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            t = t.float()
        array = t.resolve_conj().resolve_neg().numpy()
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
        raise InvalidInputError(f"tinymech cannot read a torch tensor of {t.dtype} on {t.device} ({t.layout}) "
                                f"as an array: {e}") from None
    return array[()] if array.ndim == 0 else array


def _array_to_tensor(a: np.ndarray):
    """A numpy array as a tensor over its memory; read-only arrays are copied, since writing
    through a tensor to a read-only memory map would crash the process."""
    if not a.flags.writeable:
        a = a.copy()
    try:
        return _torch.from_numpy(a)
    except TypeError:  # a dtype torch has not (strings, objects): stays an array
        return a
    except ValueError:  # negative strides or a foreign byte order
        return _torch.from_numpy(a.astype(a.dtype.newbyteorder("="), copy=True))


def _items(x, convert):
    """x with convert applied to the items of a list, tuple or dict (only those exact types, and
    named tuples marked _convert_items, as TransformerLens's Output: tinymech's other named tuples
    and result objects keep what they hold); x itself when nothing changed."""
    kind = type(x)
    if getattr(kind, "_convert_items", False):
        items = [convert(v) for v in x]
        return x if all(a is b for a, b in zip(items, x)) else kind(*items)
    if kind is list or kind is tuple:
        items = [convert(v) for v in x]
        return x if all(a is b for a, b in zip(items, x)) else kind(items)
    if kind is dict:
        converted = {k: convert(v) for k, v in x.items()}
        return x if all(converted[k] is v for k, v in x.items()) else converted
    return x


def _inbound(x, depth: int = 0):
    """What the user gives tinymech: tensors become arrays, the user's functions are adapted."""
    if type(x) in _PLAIN:
        return x
    if isinstance(x, _torch.Tensor):
        return _tensor_to_array(x)
    if _users_function(x):
        return UserFunction(x)
    return _items(x, lambda v: _inbound(v, depth + 1)) if depth < _MAX_DEPTH else x


def _outbound(x, floats: bool, depth: int = 0):
    """What tinymech gives the user: arrays become tensors (floats too, if `floats`)."""
    if type(x) in _PLAIN:
        return _torch.tensor(x, dtype=_torch.float32) if floats and type(x) is float else x
    if isinstance(x, np.ndarray):
        return _array_to_tensor(x)
    if isinstance(x, (np.number, np.bool_)):
        return _torch.from_numpy(np.asarray(x))
    if isinstance(x, UserFunction):
        return x.fn
    if isinstance(x, types.FunctionType) and _ours(x) and not getattr(x, _MARK, False):
        return _entry(x, ARRAYS)  # one of tinymech's (a metric): it takes and gives tensors too
    if isinstance(x, types.GeneratorType):
        return _stepped(x, functools.partial(_outbound, floats=floats))
    if isinstance(x, contextlib._GeneratorContextManager):
        return _ScopedContext(x, functools.partial(_outbound, floats=False))
    if depth >= _MAX_DEPTH:
        return x
    if isinstance(x, _DICT_ITEMS):
        return {k: _outbound(v, floats, depth + 1) for k, v in x}.items()
    if isinstance(x, _DICT_VALUES):
        return {i: _outbound(v, floats, depth + 1) for i, v in enumerate(x)}.values()
    return _items(x, lambda v: _outbound(v, floats, depth + 1))


def _users_function(x) -> bool:
    """A function of the user's (a lambda, a def, a bound method, a partial): not tinymech's or numpy's.
    Other callables (objects with __call__) go in as they are."""
    while isinstance(x, functools.partial):
        x = x.func
    if isinstance(x, types.MethodType):
        x = x.__func__
    if not isinstance(x, types.FunctionType) or getattr(x, _MARK, False):
        return False
    return not _ours(x)


def _ours(fn) -> bool:
    return (getattr(fn, "__module__", None) or "").split(".")[0] in ("tinymech", "numpy")


class UserFunction:
    """A function of the user's that tinymech calls (a hook, a metric, a patch setter, a names
    filter): with the switch on it gets tensors, and what it returns comes back as arrays. Its own
    calls to tinymech are the user's again, so they convert."""

    def __init__(self, fn):
        functools.update_wrapper(self, fn)  # its __name__ for error messages
        self.fn = fn

    def __call__(self, *args, **kwargs):
        if (_scoped_kind.get() or _global_kind) != "torch":
            return self.fn(*args, **kwargs)
        with _inside_call(False):
            out = self.fn(*_outbound(args, floats=False), **_outbound(kwargs, floats=False))
        return _inbound(out)

    def __reduce__(self):  # a model's add_hook hooks are pickled with it
        return UserFunction, (self.fn,)

    def __repr__(self):
        return f"UserFunction({self.fn!r})"


def _stepped(generator, convert):
    """A generator tinymech returned, each step run as inside a call, each item converted."""
    try:
        while True:
            with _inside_call():
                try:
                    item = next(generator)
                except StopIteration:
                    return
            yield convert(item)
    finally:
        with _inside_call():
            generator.close()


class _ScopedContext:
    """A context manager tinymech returned (model.hooks, model.saes), entered and left as inside a call."""

    def __init__(self, manager, convert):
        self._manager, self._convert = manager, convert

    def __enter__(self):
        with _inside_call():
            entered = self._manager.__enter__()
        return self._convert(entered)

    def __exit__(self, *exc):
        with _inside_call():
            return self._manager.__exit__(*exc)


def _kept(x):
    """An entry point's result left as it is, but for generators and context managers, which run
    tinymech's code later: that code still runs as inside a call."""
    if isinstance(x, types.GeneratorType):
        return _stepped(x, _unchanged)
    if isinstance(x, contextlib._GeneratorContextManager):
        return _ScopedContext(x, _unchanged)
    return x


def _unchanged(x):
    return x


# ---- the entry points ------------------------------------------------------------------------------

def _entry(fn, results: str):
    """fn converting at the user's boundary: what comes in always, what goes out if results is ARRAYS."""
    if getattr(fn, _MARK, False):
        return fn

    @functools.wraps(fn)
    def entry(*args, **kwargs):
        if (_scoped_kind.get() or _global_kind) != "torch" or _inside.get():  # _converting(), inlined
            return fn(*args, **kwargs)
        with _inside_call():
            out = fn(*_inbound(args), **_inbound(kwargs))
        return _outbound(out, floats=True) if results == ARRAYS else _kept(out)

    setattr(entry, _MARK, True)
    return entry


class _ArrayAttribute:
    """An instance attribute holding an array (SAE.W_dec, FactoredMatrix.A), read as a tensor
    at the user's boundary with the switch on."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        try:
            value = obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(f"{type(obj).__name__} has no attribute {self.name!r}") from None
        return _outbound(value, floats=False) if _converting() else value

    def __set__(self, obj, value):
        obj.__dict__[self.name] = _inbound(value) if _converting() else value


# ---- layer stacks in torch code -------------------------------------------------------------------

def _stack_tensor(x):
    """A layer stack as the tensor of its stacked layers (a copy, as np.asarray(stack) is);
    other values as they are, inside lists and tuples too."""
    if isinstance(x, LayerStack):
        return __import__("torch").from_numpy(np.asarray(x))  # torch is loaded: it called us
    if type(x) is list or type(x) is tuple:
        return type(x)(_stack_tensor(v) for v in x)
    return x


def _stack_torch_function(cls, func, types, args=(), kwargs=None):
    """torch.einsum(..., model.W_Q), x @ model.W_V, torch.stack([...]): torch hands a call with a
    layer stack among its arguments here, and it runs on the stacked tensor."""
    return func(*_stack_tensor(args), **{k: _stack_tensor(v) for k, v in (kwargs or {}).items()})


def _stack_tensor_attribute(self, name: str):
    """model.W_in.norm(), model.W_K.transpose(-1, -2): with the switch on, a tensor's methods
    and attributes that a layer stack lacks are its stacked tensor's."""
    if not name.startswith("_") and _converting() and hasattr(_torch.Tensor, name):
        return getattr(_stack_tensor(self), name)
    raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _stack_matmul(self, other):
    return NotImplemented if not _converting() else _stack_tensor(self) @ other


# The dunders an entry point's class wraps besides its public methods and properties.
DUNDERS = ("__init__", "__call__", "__getitem__", "__iter__", "__matmul__", "__rmatmul__", "__mul__", "__rmul__",
           "__setstate__", "__repr__", "__str__")

# The one table of what converts. A class: its public methods and properties and DUNDERS, and
# the instance attributes named, which hold arrays. ARRAYS: tensors in and out (the objects
# TransformerLens and SAELens have); NUMPY: tensors in, what comes out as it is (tinymech's own
# objects, which hold numpy arrays). A module: every function in its __all__, ARRAYS but for
# KEEPS_NUMPY; the public classes there that no row names are NUMPY (exceptions and array types aside).
ENTRY_POINTS = (
    (Model, ARRAYS, ()),
    (ModelHelpers, ARRAYS, ()),
    (LayerStack, ARRAYS, ()),
    *((module, ARRAYS, ()) for module in (model_tree.Module, model_tree.Embed, model_tree.PosEmbed,
                                          model_tree.Unembed, model_tree.Norm, model_tree.Attention,
                                          model_tree.MLP, model_tree.Block)),
    (ActivationCache, ARRAYS, ()),
    (FactoredMatrix, ARRAYS, ("A", "B")),
    (SAE, ARRAYS, WEIGHTS + ("log_sparsity",)),
    (Tokenizer, ARRAYS, ()),
    (tinymech, ARRAYS, ()),
    (analysis, ARRAYS, ()),
    (patching, ARRAYS, ()),
    (utils, ARRAYS, ()),
    (sae, ARRAYS, ()),
)
KEEPS_NUMPY = ("to_numpy",)  # utils.to_numpy asks for numpy


def _wrapped_member(member, results: str):
    if isinstance(member, property):
        wrap = functools.partial(_entry, results=results)
        return property(member.fget and wrap(member.fget), member.fset and wrap(member.fset), member.fdel,
                        member.__doc__)
    if isinstance(member, (classmethod, staticmethod)):
        return type(member)(_entry(member.__func__, results))
    if isinstance(member, types.FunctionType):
        return _entry(member, results)
    return None


def _wrap_class(cls: type, results: str, attributes=()) -> None:
    for name, member in list(vars(cls).items()):
        if name.startswith("_") and name not in DUNDERS:
            continue
        wrapped = _wrapped_member(member, results)
        if wrapped is not None:
            setattr(cls, name, wrapped)
    for name in attributes:
        setattr(cls, name, _ArrayAttribute(name))


def _wrap_module(module, results: str, wrapped: dict, named: set) -> None:
    for name in module.__all__:
        value = getattr(module, name)
        if isinstance(value, type):
            if value not in named and not issubclass(value, (BaseException, np.ndarray)):
                named.add(value)
                _wrap_class(value, NUMPY)
        elif isinstance(value, types.FunctionType) and value.__module__ != __name__:
            if id(value) not in wrapped:  # one function in several namespaces: one wrapper
                wrapped[id(value)] = _entry(value, NUMPY if name in KEEPS_NUMPY else results)
            setattr(module, name, wrapped[id(value)])


def wrap_entry_points() -> None:
    """Applies ENTRY_POINTS (once: the package's __init__ calls it)."""
    named = {owner for owner, _, _ in ENTRY_POINTS if isinstance(owner, type)}
    wrapped: dict = {}
    for owner, results, attributes in ENTRY_POINTS:
        if isinstance(owner, type):
            _wrap_class(owner, results, attributes)
        else:
            _wrap_module(owner, results, wrapped, named)
    # after the wrapping: these convert themselves (a layer stack is no tensor to convert)
    LayerStack.__torch_function__ = classmethod(_stack_torch_function)
    LayerStack.__getattr__ = _stack_tensor_attribute
    LayerStack.__matmul__ = _stack_matmul
