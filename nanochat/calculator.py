"""The calculator tool the chat model calls between <|python_start|> and <|python_end|>.

    evaluate("12 * (3 + 4)")            -> "84"
    evaluate('"strawberry".count("r")') -> "3"
    evaluate("1 / 0")                   -> raises CalcError("division by zero")

Model text is never given to eval/exec/compile: it is parsed with `ast` and walked by a small
interpreter that knows numbers, strings, arithmetic, comparisons, indexing/slicing of strings, the
functions len/abs/round and a few str methods. Anything else (names, attributes outside a
whitelisted str method call, comprehensions, lambdas, f-strings, walrus, ...) is refused.

No timeout is needed, so none relies on SIGALRM (the engine runs in threads): every operation is
checked *before* it runs so that its result stays small (integers of at most MAX_INT_BITS bits,
strings of at most MAX_STR_LEN characters), and the tree itself is bounded in size and depth.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_EXPR_LEN = 500  # characters of model text; longer is refused before parsing
MAX_NODES = 256  # AST nodes
MAX_DEPTH = 100  # AST nesting, which bounds the interpreter's recursion
MAX_INT_BITS = 3400  # ~1,000 decimal digits; also keeps str(int) far under Python's 4,300-digit cap
MAX_STR_LEN = 10_000  # characters of any intermediate or final string
MAX_ROUND_DIGITS = 100  # round(x, n): int rounding with a huge |n| would build 10**|n|
SIGNIFICANT_DIGITS = 10  # floats are shown rounded to this many significant digits


class CalcError(ValueError):
    """The expression is refused or fails; the message is a short reason for the model to read."""


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
# str methods the model may call, with the types of their positional arguments (the first n are
# required, the rest optional). Called as str.<name>(value, *args): never looked up by getattr on
# a model-chosen name, so no attribute walk can start here.
_STR_METHODS = {
    "count": ((str,), (int, int)),
    "find": ((str,), (int, int)),
    "startswith": ((str,), (int, int)),
    "endswith": ((str,), (int, int)),
    "upper": ((), ()),
    "lower": ((), ()),
    "strip": ((), (str,)),
    "replace": ((str, str), (int,)),
}
_FUNCTIONS = ("len", "abs", "round")


def evaluate(expr: str) -> str:
    """Evaluate one expression of the calculator language; the result rendered like Python's str().

    Raises CalcError with a short reason on a refused construct, a bound exceeded or a math error.
    """
    if not isinstance(expr, str):
        raise CalcError(f"expression must be text, got {type(expr).__name__}")
    expr = expr.strip()
    if not expr:
        raise CalcError("empty expression")
    if len(expr) > MAX_EXPR_LEN:
        raise CalcError(f"expression longer than {MAX_EXPR_LEN} characters")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: a NUL byte
        raise CalcError("invalid syntax") from None
    _check_tree(tree)
    try:
        value = _eval(tree.body)
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except OverflowError:
        raise CalcError("number too large") from None
    except IndexError:
        raise CalcError("index out of range") from None
    except TypeError:
        raise CalcError("unsupported operand types") from None
    except ValueError as e:  # e.g. a slice step of 0
        raise CalcError(str(e)[:80]) from None
    return _render(value)


def _check_tree(tree: ast.AST) -> None:
    """Refuse trees too large or too deep before interpreting any of them (iterative: no recursion)."""
    count = 0
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise CalcError(f"expression has more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise CalcError(f"expression nested deeper than {MAX_DEPTH}")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _eval(node: ast.AST):
    """Interpret one node; each branch checks its operands' types and the size of its result."""
    if isinstance(node, ast.Constant):
        # bool/None/bytes/complex/Ellipsis literals are refused: numbers and text only
        if type(node.value) in (int, float, str):
            return _checked(node.value)
        raise CalcError(f"unsupported literal {type(node.value).__name__}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval(node.operand)
        if not _is_number(value):
            raise CalcError("unary sign on a non-number")
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _binary(node.op, _eval(node.left), _eval(node.right))
    if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
        left = _eval(node.left)
        for op, right_node in zip(node.ops, node.comparators):
            right = _eval(right_node)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Subscript):
        return _subscript(node)
    if isinstance(node, ast.Call):
        return _call(node)
    raise CalcError(f"unsupported syntax: {type(node).__name__}")


def _is_number(value) -> bool:
    return type(value) in (int, float, bool)


def _checked(value):
    """Every value the interpreter produces passes here: only small numbers and strings survive."""
    if isinstance(value, bool) or isinstance(value, float):
        return value
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise CalcError("number too large")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STR_LEN:
            raise CalcError(f"text longer than {MAX_STR_LEN} characters")
        return value
    raise CalcError(f"unsupported result type {type(value).__name__}")  # e.g. complex from (-8) ** 0.5


def _binary(op: ast.operator, a, b):
    """a <op> b, refused before running when the result could exceed the bounds."""
    kind = type(op)
    if isinstance(a, str) or isinstance(b, str):
        if kind is ast.Add and isinstance(a, str) and isinstance(b, str):
            if len(a) + len(b) > MAX_STR_LEN:
                raise CalcError(f"text longer than {MAX_STR_LEN} characters")
        elif kind is ast.Mult and isinstance(a, str) != isinstance(b, str):
            text, times = (a, b) if isinstance(a, str) else (b, a)
            if type(times) not in (int, bool):
                raise CalcError("text can only be repeated an integer number of times")
            if len(text) * max(times, 0) > MAX_STR_LEN:
                raise CalcError(f"text longer than {MAX_STR_LEN} characters")
        else:  # notably % on text: printf-style formatting takes widths such as "%*d"
            raise CalcError("unsupported operation on text")
    elif kind is ast.Pow and type(a) in (int, bool) and type(b) in (int, bool) and b > 0:
        # |a| ** b has about b * bits(a) bits: refuse 9**9**9 without computing it
        if abs(a) > 1 and (abs(a).bit_length() - 1) * b > MAX_INT_BITS:
            raise CalcError("number too large")
    elif kind is ast.Mult and type(a) in (int, bool) and type(b) in (int, bool):
        if a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
            raise CalcError("number too large")
    result = _BINARY[kind](a, b)
    if isinstance(result, float) and math.isnan(result):
        raise CalcError("result is not a number")
    return _checked(result)


def _subscript(node: ast.Subscript):
    """text[i] or text[a:b:c] with integer bounds."""
    value = _eval(node.value)
    if not isinstance(value, str):
        raise CalcError("only text can be indexed")
    if isinstance(node.slice, ast.Slice):
        parts = [None if part is None else _eval(part) for part in (node.slice.lower, node.slice.upper, node.slice.step)]
        if any(part is not None and type(part) is not int for part in parts):
            raise CalcError("slice bounds must be integers")
        return value[slice(*parts)]
    index = _eval(node.slice)
    if type(index) is not int:
        raise CalcError("index must be an integer")
    return value[index]


def _call(node: ast.Call):
    """len/abs/round(...) or <text>.<whitelisted method>(...): positional arguments only."""
    if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
        raise CalcError("only positional arguments are supported")
    func = node.func
    if isinstance(func, ast.Name) and func.id in _FUNCTIONS:
        args = [_eval(arg) for arg in node.args]
        return _function(func.id, args)
    if isinstance(func, ast.Attribute) and func.attr in _STR_METHODS:
        target = _eval(func.value)
        if not isinstance(target, str):
            raise CalcError(f".{func.attr}() works on text only")
        args = [_eval(arg) for arg in node.args]
        required, optional = _STR_METHODS[func.attr]
        if not len(required) <= len(args) <= len(required) + len(optional):
            raise CalcError(f".{func.attr}() takes {len(required)} to {len(required) + len(optional)} arguments")
        for arg, kind in zip(args, required + optional):
            if type(arg) is not kind:
                raise CalcError(f".{func.attr}() got a {type(arg).__name__} argument, wants {kind.__name__}")
        if func.attr == "replace":
            _check_replace(target, *args)
        return _checked(getattr(str, func.attr)(target, *args))
    if isinstance(func, ast.Name):
        raise CalcError(f"unknown function {func.id!r}")
    if isinstance(func, ast.Attribute):
        raise CalcError(f"unsupported method {func.attr!r}")
    raise CalcError("unsupported call")


def _function(name: str, args: list):
    if name == "len":
        if len(args) != 1 or not isinstance(args[0], str):
            raise CalcError("len() takes one text argument")
        return len(args[0])
    if name == "abs":
        if len(args) != 1 or not _is_number(args[0]):
            raise CalcError("abs() takes one number")
        return abs(args[0])
    # round(x) or round(x, n)
    if not 1 <= len(args) <= 2 or not _is_number(args[0]) or (len(args) == 2 and type(args[1]) is not int):
        raise CalcError("round() takes a number and an optional integer number of digits")
    if len(args) == 2 and abs(args[1]) > MAX_ROUND_DIGITS:
        raise CalcError(f"round() digits must be within +-{MAX_ROUND_DIGITS}")
    return _checked(round(*args))


def _check_replace(text: str, old: str, new: str, count: int = -1) -> None:
    """Bound the length of text.replace(old, new, count) before building it."""
    slots = len(text) + 1 if old == "" else text.count(old)  # "" matches between every character
    if count >= 0:
        slots = min(slots, count)
    if len(text) + slots * max(len(new) - len(old), 0) > MAX_STR_LEN:
        raise CalcError(f"text longer than {MAX_STR_LEN} characters")


def _render(value) -> str:
    """Python's str() of the result, floats rounded to SIGNIFICANT_DIGITS (0.1 + 0.2 -> 0.3)."""
    if isinstance(value, float) and math.isfinite(value):
        return repr(float(f"{value:.{SIGNIFICANT_DIGITS}g}"))
    return str(value)
