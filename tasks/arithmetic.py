"""Generated arithmetic word problems whose answers call the calculator tool.

Offline and of any size, so that even a tiny CPU model can be seen to learn tool use: every
assistant reply is text -> python "expr" -> python_output (the calculator's real result) -> text
ending in "#### N", the same final-answer convention as GSM8K.
"""

from __future__ import annotations

import random

from nanochat.calculator import evaluate as calculate
from tasks.common import Task, assistant_text, extract_final_number, numbers_equal

_NAMES = ["Alice", "Bob", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jamal",
          "Kira", "Liam", "Mina", "Noah", "Olga", "Priya", "Quinn", "Ravi", "Sofia", "Tom"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "shells",
          "cards", "oranges", "stamps", "balloons"]

# (question template, expression template, how the operands are drawn). Operands are drawn so the
# result is a non-negative integer: division is exact and subtraction never goes below zero.
_PROBLEMS = [
    ("{n} has {a} {it}. {n} gets {b} more. How many {it} does {n} have now?", "{a} + {b}", "add"),
    ("{n} collected {a} {it} on Monday and {b} {it} on Tuesday. How many {it} is that altogether?",
     "{a} + {b}", "add"),
    ("{n} had {a} {it} and gave {b} of them away. How many {it} are left?", "{a} - {b}", "sub"),
    ("There were {a} {it} in a jar. {n} took out {b}. How many {it} remain in the jar?", "{a} - {b}", "sub"),
    ("{n} buys {a} bags with {b} {it} in each bag. How many {it} does {n} buy in total?", "{a} * {b}", "mul"),
    ("A shelf has {a} rows of {b} {it}. How many {it} are on the shelf?", "{a} * {b}", "mul"),
    ("{n} shares {a} {it} equally among {b} friends. How many {it} does each friend get?",
     "{a} // {b}", "div"),
    ("{n} packs {a} {it} into boxes of {b}. How many full boxes does {n} fill?", "{a} // {b}", "div"),
    ("{n} buys {a} packs of {b} {it} and then loses {c}. How many {it} does {n} have?",
     "{a} * {b} - {c}", "mul_sub"),
    ("{n} has {a} {it}, finds {b} more, and then buys {c} packs of {d}. How many {it} does {n} have now?",
     "{a} + {b} + {c} * {d}", "add_mul"),
]
_LEADS = ["Let me work it out with the calculator.", "I'll compute this.", "Let's calculate.",
          "Let me compute it.", "Using the calculator:"]
_ENDINGS = ["The answer is {r}.", "So the result is {r}.", "That gives {r}.", "The result is {r}."]


def _operands(kind: str, rng: random.Random) -> dict[str, int]:
    if kind == "add":
        return {"a": rng.randint(2, 999), "b": rng.randint(2, 999)}
    if kind == "sub":
        a = rng.randint(10, 999)
        return {"a": a, "b": rng.randint(1, a)}
    if kind == "mul":
        return {"a": rng.randint(2, 60), "b": rng.randint(2, 60)}
    if kind == "div":
        b, q = rng.randint(2, 25), rng.randint(2, 60)
        return {"a": b * q, "b": b}
    if kind == "mul_sub":
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        return {"a": a, "b": b, "c": rng.randint(1, a * b)}
    if kind == "add_mul":
        return {"a": rng.randint(1, 200), "b": rng.randint(1, 200), "c": rng.randint(2, 20),
                "d": rng.randint(2, 20)}
    raise AssertionError(kind)


def make_problem(rng: random.Random) -> dict:
    """One conversation drawn from rng; the tool output is the calculator's own result."""
    question, expr_t, kind = rng.choice(_PROBLEMS)
    ops = _operands(kind, rng)
    fill = {"n": rng.choice(_NAMES), "it": rng.choice(_ITEMS), **ops}
    expr = expr_t.format(**ops)
    result = calculate(expr)
    parts = [
        {"type": "text", "text": rng.choice(_LEADS)},
        {"type": "python", "text": expr},
        {"type": "python_output", "text": result},
        {"type": "text", "text": rng.choice(_ENDINGS).format(r=result) + f"\n\n#### {result}"},
    ]
    return {"messages": [{"role": "user", "content": question.format(**fill)},
                         {"role": "assistant", "content": parts}]}


class Arithmetic(Task):
    """`size` generated problems; example i depends only on (seed, i), so any slice is reproducible."""

    eval_type = "generative"

    def __init__(self, size: int = 1000, seed: int = 0, **kwargs):
        if size < 0:
            raise ValueError(f"Arithmetic size must be >= 0, got {size}")
        self.size, self.seed = size, seed
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return self.size

    def get_example(self, index: int) -> dict:
        # a per-example generator (not one stream) so example i is the same whatever is read before it
        return make_problem(random.Random(f"arithmetic-{self.seed}-{index}"))

    def evaluate(self, conversation: dict, completion: str) -> bool:
        expected = extract_final_number(assistant_text(conversation))
        return numbers_equal(extract_final_number(completion), expected)
