"""The arithmetic word problems of tasks/arithmetic.py, asked and answered in Korean.

Same operands, the same calculator call and the same "#### N" ending (so the same evaluation); the
problems are written in polite Korean with the counter word each object takes (사과 3개, 책 3권),
and particles after names and counters chosen by tasks.identity.fill.
"""

from __future__ import annotations

import random

from nanochat.calculator import evaluate as calculate
from tasks.arithmetic import Arithmetic, _operands
from tasks.identity import fill

_NAMES = ["민준", "서연", "지우", "하준", "수아", "도윤", "지민", "예은", "현우", "하나", "유나", "태오"]
_ITEMS = [("사과", "개"), ("구슬", "개"), ("스티커", "장"), ("책", "권"), ("연필", "자루"), ("쿠키", "개"),
          ("동전", "개"), ("카드", "장"), ("귤", "개"), ("우표", "장"), ("풍선", "개"), ("공책", "권")]
_PROBLEMS = [
    ("{n:은/는} {it:을/를} {a}{u} 가지고 있습니다. {b}{u:을/를} 더 받으면 모두 몇 {u}인가요?", "{a} + {b}", "add"),
    ("{n:이/가} 월요일에 {it:을/를} {a}{u}, 화요일에 {b}{u:을/를} 모았어요. 모두 몇 {u}인가요?", "{a} + {b}", "add"),
    ("{n:은/는} {it} {a}{u} 중에서 {b}{u:을/를} 친구에게 주었습니다. 남은 {it:은/는} 몇 {u}인가요?", "{a} - {b}", "sub"),
    ("상자에 {it:이/가} {a}{u} 있었는데 {n:이/가} {b}{u:을/를} 꺼냈어요. 상자에 남은 {it:은/는} 몇 {u}인가요?",
     "{a} - {b}", "sub"),
    ("{n:은/는} {it:이/가} {b}{u}씩 든 묶음을 {a}개 샀습니다. {n:이/가} 산 {it:은/는} 모두 몇 {u}인가요?",
     "{a} * {b}", "mul"),
    ("책장에 {it:이/가} 한 줄에 {b}{u}씩 {a}줄 있어요. 책장에 있는 {it:은/는} 모두 몇 {u}인가요?", "{a} * {b}", "mul"),
    ("{n:은/는} {it} {a}{u:을/를} 친구 {b}명에게 똑같이 나누어 주었습니다. 한 명이 받은 {it:은/는} 몇 {u}인가요?",
     "{a} // {b}", "div"),
    ("{n:이/가} {it} {a}{u:을/를} 상자 하나에 {b}{u}씩 담으려고 해요. 가득 찬 상자는 몇 개인가요?",
     "{a} // {b}", "div"),
    ("{n:은/는} {it:이/가} {b}{u}씩 든 묶음을 {a}개 사고 {c}{u:을/를} 잃어버렸습니다. 남은 {it:은/는} 몇 {u}인가요?",
     "{a} * {b} - {c}", "mul_sub"),
]
_LEADS = ["계산기로 계산해 볼게요.", "계산해 보겠습니다.", "계산기를 써서 풀어 볼게요.", "식을 세워 계산하면 다음과 같습니다."]
_ENDINGS = ["답은 {r}입니다.", "따라서 {r}{u}입니다.", "모두 {r}{u:이에요/예요}.", "결과는 {r}입니다."]


def make_problem(rng: random.Random) -> dict:
    """One Korean conversation drawn from rng; the tool output is the calculator's own result."""
    question, expr_t, kind = rng.choice(_PROBLEMS)
    ops = _operands(kind, rng)
    item, unit = rng.choice(_ITEMS)
    if "상자" in question and kind == "div":
        unit_of_answer = "개"  # "how many boxes": boxes are counted with 개 whatever they hold
    else:
        unit_of_answer = unit
    values = {"n": rng.choice(_NAMES), "it": item, "u": unit, **{k: str(v) for k, v in ops.items()}}
    expr = expr_t.format(**ops)
    result = calculate(expr)
    ending = fill(rng.choice(_ENDINGS), r=result, u=unit_of_answer)
    parts = [
        {"type": "text", "text": rng.choice(_LEADS)},
        {"type": "python", "text": expr},
        {"type": "python_output", "text": result},
        {"type": "text", "text": f"{ending}\n\n#### {result}"},
    ]
    return {"messages": [{"role": "user", "content": fill(question, **values)},
                         {"role": "assistant", "content": parts}]}


class ArithmeticKo(Arithmetic):
    """`size` generated Korean problems; example i depends only on (seed, i)."""

    def get_example(self, index: int) -> dict:
        return make_problem(random.Random(f"arithmetic-ko-{self.seed}-{index}"))
