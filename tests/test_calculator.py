"""The calculator tool: exact results on small inputs, and every escape or blow-up attempt refused fast."""

import time

import pytest

from nanochat.calculator import MAX_EXPR_LEN, CalcError, evaluate


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("1 + 2", "3"),
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("2 ** 3 ** 2", "512"),  # right-associative, as in Python
        ("-2 ** 2", "-4"),
        ("7 // 2", "3"),
        ("-7 // 2", "-4"),
        ("7 % 3", "1"),
        ("7 / 2", "3.5"),
        ("10 / 2", "5.0"),
        ("0.1 + 0.2", "0.3"),  # rounded to 10 significant digits
        ("1 / 3", "0.3333333333"),
        ("1e20 * 10", "1e+21"),
        ("+5 - -3", "8"),
        ("2 ** -1", "0.5"),
        ("2 ** 100", str(2**100)),
        ("1_000 * 3", "3000"),
        ("3 < 4 <= 4", "True"),
        ("3 > 4", "False"),
        ("1 == 1.0", "True"),
        ("abs(-3)", "3"),
        ("round(2.567, 2)", "2.57"),
        ("round(7.5)", "8"),
        ('"strawberry".count("r")', "3"),
        ("'banana'.count('a', 2)", "2"),
        ('len("hello")', "5"),
        ('"Hello".upper()', "HELLO"),
        ('"Hello".lower()', "hello"),
        ('"a-b-c".replace("-", "+")', "a+b+c"),
        ('"  x ".strip()', "x"),
        ('"hello"[1]', "e"),
        ('"hello"[-1]', "o"),
        ('"hello"[1:3]', "el"),
        ('"hello"[::-1]', "olleh"),
        ('"ab" + "cd"', "abcd"),
        ('"ab" * 3', "ababab"),
        ('"abc".upper().count("B")', "1"),
        ('"hello".startswith("he")', "True"),
        ('"hello".find("l")', "2"),
    ],
)
def test_values(expr, expected):
    assert evaluate(expr) == expected


@pytest.mark.parametrize(
    "expr, reason",
    [
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("1.5 / 0", "division by zero"),
        ("", "empty"),
        ("1 +", "syntax"),
        ('"abc"[10]', "out of range"),
        ('"abc"[::0]', "zero"),
        ('"a" + 1', "unsupported"),
        ('"a" < 1', "unsupported"),
        ("(-8) ** 0.5", "unsupported result"),
        ("1e308 ** 2", "too large"),
    ],
)
def test_errors(expr, reason):
    with pytest.raises(CalcError, match=reason):
        evaluate(expr)


ESCAPES = [
    "__import__('os')",
    "__import__('os').system('echo hi')",
    "().__class__.__bases__[0].__subclasses__()",
    "''.__class__.__mro__[1].__subclasses__()",
    "open('x')",
    "print(1)",
    "eval('1')",
    "(lambda: 1)()",
    "[x for x in range(10**9)]",
    "{x for x in 'ab'}",
    "(x for x in 'ab')",
    "[1, 2]",
    "(1, 2)",
    "{'a': 1}",
    "x",
    "True",
    "None",
    "b'x'",
    "1j",
    "9**9**9",
    "10**10**10",
    "2**(2**20)",
    "'a'*10**9",
    "10**9*'a'",
    "'ab'*5001",
    "'a'*2.5",
    "'%*d' % (10**9, 1)",
    "'%s' % 1",
    "('a'*5000+'a'*5000)+'a'",
    "'aaaaaaaaaa'.replace('a', 'b'*2000)",
    "'ab'.replace('', 'x'*5000)",
    "round(5, -10**9)",
    "10**1000 * 10**1000",
    "'x'.format",
    "'{}'.format(1)",
    "'{0.__class__}'.format('')",
    "f'{1+1}'",
    "(y := 3)",
    "''.join('ab')",
    "''.__class__",
    "'a'.__len__()",
    "'a'.count",
    "'a'.count(sub='a')",
    "len(*'ab')",
    "len([1])",
    "abs('x')",
    "'a'.upper(1)",
    "'abc'.count(1)",
    "1 if 1 else 2",
    "1 and 2",
    "not 1",
    "~1",
    "1 << 10000",
    "1 in 'a'",
    "'a' is 'a'",
    "import os",
    "1; 2",
    "a = 1",
    "1\x00",
    "(" * 10_000 + "1" + ")" * 10_000,
    "(" * 240 + "1" + ")" * 240,
    "-" * 400 + "1",
    "1" + "+1" * 240,
    "9" * 100_000,
    "'" + "a" * 100_000 + "'",
]


@pytest.mark.parametrize("expr", ESCAPES, ids=lambda e: e[:40])
def test_refused_quickly(expr):
    start = time.perf_counter()
    with pytest.raises(CalcError):
        evaluate(expr)
    assert time.perf_counter() - start < 0.5


def test_bounds_allow_reasonable_sizes():
    assert evaluate("2 ** 3000") == str(2**3000)
    assert evaluate("'ab' * 5000") == "ab" * 5000
    assert len(evaluate("9" * MAX_EXPR_LEN)) == MAX_EXPR_LEN  # a long literal within the length cap


def test_non_string_input():
    with pytest.raises(CalcError):
        evaluate(None)  # type: ignore[arg-type]


def test_never_executes_code(monkeypatch):
    """Only ast.parse may reach compile(), and only to build a tree (PyCF_ONLY_AST): nothing is executed."""
    import ast
    import builtins

    real_compile = builtins.compile
    calls = []

    def only_ast(source, filename, mode, flags=0, *args, **kwargs):
        calls.append(flags)
        assert flags & ast.PyCF_ONLY_AST, "the calculator compiled model text to code"
        return real_compile(source, filename, mode, flags, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("the calculator called eval/exec")

    monkeypatch.setattr(builtins, "compile", only_ast)
    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    try:
        assert evaluate("(1 + 2) * 3") == "9"
        assert evaluate('"ab".upper()') == "AB"
    finally:
        monkeypatch.undo()  # before pytest itself needs compile() to report anything
    assert calls
