"""Python functions from the bytecode that Keras 2 stored for `Lambda` layers.

Keras 2 saved a Python lambda as its marshalled code object. That bytecode only runs on the Python
version that wrote it, and unmarshalling another version's code can crash the interpreter. So the
code object is first parsed by `_MarshalReader`: when it has this Python's layout, `marshal` loads
it; when it comes from Python 3.6–3.10, `_run_wordcode` evaluates it instruction by instruction
(the arithmetic, indexing and calls that preprocessing lambdas use); anything else is refused with a
clear message.
"""

from __future__ import annotations

import base64
import builtins
import dataclasses
import enum
import functools
import marshal
import math
import operator
import struct
import sys
import types
from collections.abc import Callable
from typing import ClassVar

from deadrelu.errors import ModelLoadError

_LAYOUT_NAMES = {"3.6": "Python 3.6-3.7", "3.8": "Python 3.8-3.10", "3.11": "Python 3.11 or later"}


def lambda_code(function) -> tuple | None:
    """Finds the stored Python code in the `function` field of a Lambda layer's config.

    Args:
        function: The field's value: a Keras 2 list `[code, defaults, closure]`, a Keras 3
            `{"class_name": "__lambda__", ...}` dict, or anything else (a function's name).

    Returns:
        `(base64 code, defaults, closure)`, or None when the field holds no Python code.
    """
    if isinstance(function, (list, tuple)) and function and isinstance(function[0], str):
        padded = list(function) + [None, None]
        return padded[0], padded[1], padded[2]
    if isinstance(function, dict) and function.get("class_name") == "__lambda__":
        inner = function.get("config") or {}
        if "code" in inner:
            return inner["code"], inner.get("defaults"), inner.get("closure")
        if isinstance(inner.get("value"), (list, tuple)):
            return lambda_code(list(inner["value"]))
    return None


def function_from_code(code: str, defaults, closure, *, where: str) -> tuple[Callable, str]:
    """Rebuilds a function from the marshalled bytecode Keras stores for a Python lambda.

    Args:
        code: The base64 text of the marshalled code object (or its raw_unicode_escape text).
        defaults: The lambda's default argument values, or None.
        closure: The values of the lambda's free variables, or None.
        where: What holds the code, for messages ("Lambda layer 'lambda_1'").

    Returns:
        `(function, a description of where its code came from)`.

    Raises:
        ModelLoadError: The bytecode cannot be read or run on this Python.
    """
    try:
        raw = base64.b64decode(code.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raw = code.encode("raw_unicode_escape")
    layout, parsed = _MarshalReader.identify(raw)
    defaults = tuple(defaults) if isinstance(defaults, list) else defaults
    closure = tuple(closure) if closure else ()
    if layout == _MarshalReader.current_layout():
        return _native_function(raw, defaults, closure, where), "the Python code"
    if layout in ("3.6", "3.8") and parsed is not None:
        function = _wordcode_function(parsed, defaults, closure, where)
        return function, f"the {_LAYOUT_NAMES[layout]} bytecode (evaluated instruction by instruction)"
    found = _LAYOUT_NAMES.get(layout, "an unknown or older Python version (e.g. 2.7 or 3.5)")
    raise ModelLoadError(
        f"the {where} holds Python bytecode from {found}, which Python "
        f"{sys.version_info.major}.{sys.version_info.minor} cannot run; load the model with that "
        "Python version, or rebuild the Lambda in code"
    )


def _native_function(raw: bytes, defaults, closure: tuple, where: str) -> Callable:
    """Unmarshals bytecode written by this Python's layout into a function."""
    try:
        native = marshal.loads(raw)
    except (ValueError, EOFError, TypeError) as exc:
        raise ModelLoadError(f"the {where} holds Python code that cannot be read ({exc})") from exc
    cells = tuple(types.CellType(value) for value in closure) or None
    return types.FunctionType(native, _lambda_globals(), native.co_name, defaults, cells)


@functools.lru_cache(maxsize=1)
def _lambda_globals() -> dict:
    """Globals for stored lambdas: the module aliases Keras 2 code used (K, tf, np, keras)."""
    import keras
    import numpy as np

    names = {"__builtins__": builtins, "np": np, "numpy": np, "keras": keras, "ops": keras.ops, "math": math}
    try:
        import tensorflow as tf

        names["tf"] = tf
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        pass
    try:
        import tf_keras

        names["K"] = names["backend"] = tf_keras.backend
    except ImportError:
        names["K"] = names["backend"] = keras.ops
    return names


# ----------------------------------------------------------------------------------------------
# Reading code objects of other Python versions


@dataclasses.dataclass
class _Code:
    """The parts of a foreign code object that `_run_wordcode` needs."""

    argcount: int
    code: bytes
    consts: tuple
    names: tuple
    varnames: tuple
    freevars: tuple
    cellvars: tuple


class _MarshalReader:
    """Reads marshalled code objects written by other Python 3 versions.

    The marshal format is stable, but the fields of a code object are not: 3.6–3.7 store 5 ints
    (with nlocals), 3.8–3.10 6 ints (with posonlyargcount), 3.11+ 5 different ints and other tuples.
    `identify` tries each layout and keeps the one that reads the whole stream consistently.
    """

    LAYOUTS = ("3.6", "3.8", "3.11")
    _HEADER_INTS: ClassVar[dict] = {"3.6": 5, "3.8": 6, "3.11": 5}
    _CONSTANTS: ClassVar[dict] = {"N": None, "F": False, "T": True, ".": Ellipsis}

    def __init__(self, data: bytes, layout: str):
        self.data, self.pos, self.layout, self.refs = data, 0, layout, []

    @classmethod
    def identify(cls, data: bytes) -> tuple[str | None, _Code | None]:
        """Returns (layout, code) for the layout that parses `data`, or (None, None)."""
        for layout in cls.LAYOUTS:
            reader = cls(data, layout)
            try:
                code = reader.read()
            except (ValueError, IndexError, struct.error, KeyError, UnicodeDecodeError):
                continue
            if isinstance(code, _Code) and reader.pos == len(data):
                return layout, code
        return None, None

    @staticmethod
    def current_layout() -> str:
        """The layout of the running Python's code objects."""
        version = sys.version_info[:2]
        return "3.6" if version < (3, 8) else "3.8" if version < (3, 11) else "3.11"

    def read(self):
        """Reads one marshalled object."""
        code = self._byte()
        kind, flagged = chr(code & 0x7F), code & 0x80
        slot = None
        if flagged:  # CPython reserves the reference slot before reading the object's children
            slot = len(self.refs)
            self.refs.append(None)
        value = self._value(kind)
        if slot is not None:
            self.refs[slot] = value
        return value

    def _byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def _int(self) -> int:
        (value,) = struct.unpack_from("<i", self.data, self.pos)
        self.pos += 4
        return value

    def _bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def _value(self, kind: str):
        if kind in self._CONSTANTS:
            return self._CONSTANTS[kind]
        if kind == "i":
            return self._int()
        if kind == "g":
            return struct.unpack("<d", self._bytes(8))[0]
        if kind == "y":
            real, imag = struct.unpack("<dd", self._bytes(16))
            return complex(real, imag)
        if kind == "l":
            n = self._int()
            digits = [struct.unpack("<H", self._bytes(2))[0] for _ in range(abs(n))]
            value = sum(d << (15 * k) for k, d in enumerate(digits))
            return -value if n < 0 else value
        if kind == "s":
            return self._bytes(self._int())
        if kind in "uta":
            return self._bytes(self._int()).decode("utf-8" if kind in "ut" else "latin-1")
        if kind in "zZA":
            n = self._byte() if kind in "zZ" else self._int()
            return self._bytes(n).decode("latin-1")
        if kind in ")([<>":
            n = self._byte() if kind == ")" else self._int()
            items = [self.read() for _ in range(n)]
            return tuple(items) if kind in ")(" else items if kind == "[" else frozenset(items)
        if kind == "r":
            return self.refs[self._int()]
        if kind == "c":
            return self._code()
        raise ValueError(f"unsupported marshal type {kind!r}")

    def _skip(self, *fields: str) -> None:
        """Reads past fields the interpreter does not need (`firstlineno` is a bare int)."""
        for field in fields:
            self._int() if field == "firstlineno" else self.read()

    def _code(self) -> _Code:
        header = [self._int() for _ in range(self._HEADER_INTS[self.layout])]
        code, consts, names = self.read(), self.read(), self.read()
        if self.layout == "3.11":
            localsplusnames, kinds = self.read(), self.read()
            self._skip("filename", "name", "qualname", "firstlineno", "linetable", "exceptiontable")
            if not isinstance(kinds, bytes) or not isinstance(localsplusnames, tuple):
                raise ValueError("not a 3.11 code object")
            varnames, freevars, cellvars = localsplusnames, (), ()
        else:
            varnames, freevars, cellvars = self.read(), self.read(), self.read()
            self._skip("filename", "name", "firstlineno", "lnotab")
            if not all(isinstance(v, tuple) for v in (varnames, freevars, cellvars)):
                raise ValueError("not a 3.6-3.10 code object")
        if not isinstance(code, bytes) or not isinstance(consts, tuple) or not isinstance(names, tuple):
            raise ValueError("not a code object")
        return _Code(header[0], code, consts, names, varnames, freevars, cellvars)


# ----------------------------------------------------------------------------------------------
# Evaluating Python 3.6–3.10 wordcode


class _Op(enum.IntEnum):
    """The Python 3.6–3.10 opcodes, besides arithmetic, that `_run_wordcode` evaluates."""

    POP_TOP = 1
    ROT_TWO = 2
    DUP_TOP = 4
    NOP = 9
    RETURN_VALUE = 83
    LOAD_CONST = 100
    BUILD_TUPLE = 102
    BUILD_LIST = 103
    LOAD_ATTR = 106
    COMPARE_OP = 107
    LOAD_GLOBAL = 116
    LOAD_FAST = 124
    CALL_FUNCTION = 131
    BUILD_SLICE = 133
    LOAD_DEREF = 136
    CALL_FUNCTION_KW = 141
    EXTENDED_ARG = 144
    BUILD_CONST_KEY_MAP = 156
    LOAD_METHOD = 160
    CALL_METHOD = 161


# BINARY_* and UNARY_* opcodes (the same from 3.6 to 3.10) and the operator each applies.
_BINARY_OPS = {
    16: operator.matmul,
    19: operator.pow,
    20: operator.mul,
    22: operator.mod,
    23: operator.add,
    24: operator.sub,
    25: operator.getitem,
    26: operator.floordiv,
    27: operator.truediv,
    62: operator.lshift,
    63: operator.rshift,
    64: operator.and_,
    65: operator.xor,
    66: operator.or_,
}
_UNARY_OPS = {10: operator.pos, 11: operator.neg, 12: operator.not_, 15: operator.invert}
# COMPARE_OP's argument: <, <=, ==, !=, >, >=.
_COMPARE_OPS = (operator.lt, operator.le, operator.eq, operator.ne, operator.gt, operator.ge)
_EVALUATED = frozenset(_Op).union(_BINARY_OPS, _UNARY_OPS)


def _wordcode_function(code: _Code, defaults, closure: tuple, where: str) -> Callable:
    """A Python function that evaluates Python 3.6–3.10 lambda bytecode with `_run_wordcode`."""
    params = code.varnames[: code.argcount]
    defaults = tuple(defaults or ())

    def function(*args, **kwargs):
        local = dict(zip(params[len(params) - len(defaults) :], defaults))
        local.update(zip(params, args))
        local.update(kwargs)
        return _run_wordcode(code, local, closure, where)

    _run_wordcode(code, None, closure, where)  # check every instruction now, not at the first call
    return function


def _run_wordcode(code: _Code, local: dict | None, closure: tuple, where: str):
    """Evaluates straight-line Python 3.6–3.10 bytecode; with `local=None` only checks the opcodes."""
    stack: list = []
    glob = _lambda_globals() if local is not None else {}
    extended = 0
    for offset in range(0, len(code.code) - 1, 2):
        op, arg = code.code[offset], code.code[offset + 1] | extended
        extended = 0
        if op == _Op.EXTENDED_ARG:
            extended = arg << 8
            continue
        if local is None:
            if op not in _EVALUATED:
                raise ModelLoadError(
                    f"the {where} holds Python 3.6-3.10 bytecode with an instruction (opcode {op}) "
                    "that deadrelu cannot translate to this Python; load the model with the Python "
                    "version that saved it, or rebuild the Lambda in code"
                )
            continue
        if op in _BINARY_OPS:
            right = stack.pop()
            stack.append(_BINARY_OPS[op](stack.pop(), right))
        elif op in _UNARY_OPS:
            stack.append(_UNARY_OPS[op](stack.pop()))
        elif op == _Op.RETURN_VALUE:
            return stack.pop()
        else:
            _step(op, arg, code, stack, local, glob, closure, where)
    if local is not None:
        raise ModelLoadError(f"the {where} holds Python bytecode that does not return a value")
    return None


def _step(op: int, arg: int, code: _Code, stack: list, local: dict, glob: dict, closure: tuple, where: str):
    """Executes one non-arithmetic instruction of `_run_wordcode`."""
    if op == _Op.LOAD_CONST:
        stack.append(code.consts[arg])
    elif op == _Op.LOAD_FAST:
        stack.append(local[code.varnames[arg]])
    elif op == _Op.LOAD_GLOBAL:
        stack.append(_global(code.names[arg], glob, where))
    elif op == _Op.LOAD_DEREF:  # the lambda's closure (it has no cells of its own)
        stack.append(closure[arg - len(code.cellvars)])
    elif op in (_Op.LOAD_ATTR, _Op.LOAD_METHOD):  # LOAD_METHOD: push the bound attribute
        stack.append(getattr(stack.pop(), code.names[arg]))
    elif op in (_Op.CALL_FUNCTION, _Op.CALL_METHOD):
        args = _pop(stack, arg)
        stack.append(stack.pop()(*args))
    elif op == _Op.CALL_FUNCTION_KW:
        keys = stack.pop()
        values = _pop(stack, arg)
        split = len(values) - len(keys)
        stack.append(stack.pop()(*values[:split], **dict(zip(keys, values[split:]))))
    elif op in (_Op.BUILD_TUPLE, _Op.BUILD_LIST):
        items = _pop(stack, arg)
        stack.append(tuple(items) if op == _Op.BUILD_TUPLE else items)
    elif op == _Op.BUILD_CONST_KEY_MAP:
        keys = stack.pop()
        stack.append(dict(zip(keys, _pop(stack, arg))))
    elif op == _Op.BUILD_SLICE:
        stack.append(slice(*_pop(stack, arg)))
    elif op == _Op.COMPARE_OP:
        right = stack.pop()
        stack.append(_COMPARE_OPS[arg](stack.pop(), right))
    elif op == _Op.POP_TOP:
        stack.pop()
    elif op == _Op.ROT_TWO:
        stack[-1], stack[-2] = stack[-2], stack[-1]
    elif op == _Op.DUP_TOP:
        stack.append(stack[-1])


def _pop(stack: list, n: int) -> list:
    """Pops the top `n` values of the stack, in the order they were pushed."""
    return [stack.pop() for _ in range(n)][::-1]


def _global(name: str, glob: dict, where: str):
    """Resolves a global name of a stored lambda: a module alias, else a builtin."""
    if name in glob:
        return glob[name]
    if hasattr(builtins, name):
        return getattr(builtins, name)
    raise ModelLoadError(f"the {where} uses the global name '{name}', which deadrelu cannot provide")
