"""Synthetic spelling tasks from a word list: SpellingBee (count a letter in a word, worked out with
the calculator) and SimpleSpelling (spell a word letter by letter).

Tokens hide letters from the model; these tasks teach it to spell a word out and to hand counting
to the tool. The word list, in this order: a path passed in; words_alpha.txt (dwyl/english-words,
~370k words) from the tasks.sources registry (`python -m tasks.sources --dataset=words`, or
NANOCHAT_SOURCE_WORDS_ALPHA=/path/words_alpha.txt); else a list derived offline (see load_words).
Nothing is downloaded here. `word_list` says which one a task uses.

Every list is split by a hash of each word: a tenth of the words are evaluation words, the rest
training words, so training (split="train", the default) never spells or counts a word that
evaluation (split="eval") asks about, whichever list is used and whatever the seeds. Drawing both
from one list, as upstream does, lets a model be scored on words it was trained on.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Literal

from nanochat.calculator import evaluate as calculate
from nanochat.common import print0
from tasks.common import Task, assistant_text, extract_final_number, numbers_equal

# the last resort when the Python install has no pydoc_data (some distro builds strip it)
_FALLBACK_WORDS = """
apple banana cherry strawberry blueberry raspberry orange lemon melon grape peach
mountain river ocean island forest desert valley meadow garden window kitchen bottle
computer keyboard language grammar library pencil notebook teacher student science
elephant giraffe kangaroo penguin dolphin octopus butterfly squirrel rabbit turtle
mississippi bookkeeper committee balloon coffee yellow address success possess tomorrow
necessary occasionally accommodate embarrass parallel vacuum rhythm sphinx queue jazz
""".split()

_WORD = re.compile(r"\b[a-z]{3,12}\b")
_VOWELS = set("aeiouy")
EVAL_BUCKETS = 10  # one word in EVAL_BUCKETS (by hash) is an evaluation word
Split = Literal["train", "eval", "all"]


def is_eval_word(word: str) -> bool:
    """Whether `word` is held out for evaluation: fixed by the word alone, the same in every list."""
    digest = hashlib.sha256(word.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % EVAL_BUCKETS == 0


def split_words(words: list[str], split: Split) -> list[str]:
    """The training words (split="train"), the evaluation words ("eval"), or all of them, in order."""
    if split == "all":
        return list(words)
    if split not in ("train", "eval"):
        raise ValueError(f"split must be train, eval or all, got {split!r}")
    return [w for w in words if is_eval_word(w) == (split == "eval")]


def resolve_word_list(path: str | Path | None = None) -> tuple[list[str], str]:
    """(words, what they are): the file at `path`, else the registry's words_alpha.txt when present
    (downloaded, or named by NANOCHAT_SOURCE_WORDS_ALPHA), else the built-in list."""
    if path is not None:
        words = load_words(path)
        return words, f"{path} ({len(words):,} words)"
    from tasks.sources import require  # imported here: the registry is only needed for this lookup

    try:
        (registry,) = require("words", "alpha")
    except FileNotFoundError:
        import sys

        words = load_words()
        return words, (f"built-in (Python {sys.version_info.major}.{sys.version_info.minor} help topics, "
                       f"{len(words):,} words; words_alpha.txt: python -m tasks.sources --dataset=words)")
    words = load_words(registry)
    return words, f"words_alpha.txt ({registry}, {len(words):,} words)"


def load_words(path: str | Path | None = None) -> list[str]:
    """Sorted distinct lowercase alphabetic words.

    path: a text file with one word per line (e.g. words_alpha.txt); non-alphabetic lines are skipped.
    None: the words of 3-12 letters (with a vowel, to skip most identifiers and abbreviations) in the
    Python reference's help topics (pydoc_data.topics, ~2,700 words), which every CPython install
    carries, so the list is the same for the same Python version and needs no download.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"word list {path} not found: pass the path of words_alpha.txt "
                                    "(github.com/dwyl/english-words) or None for the built-in list")
        with open(path, encoding="utf-8") as f:
            words = {w for w in (line.strip().lower() for line in f) if w.isascii() and w.isalpha()}
    else:
        try:
            from pydoc_data.topics import topics
            words = {w for text in topics.values() for w in _WORD.findall(text) if _VOWELS & set(w)}
        except ImportError:
            words = set(_FALLBACK_WORDS)
    if not words:
        raise ValueError(f"the word list {path} has no alphabetic words")
    return sorted(words)


class _WordTask(Task):
    """size examples drawn with `seed` from the `split` words of a list: `words`, else resolve_word_list(words_path)."""

    eval_type = "generative"

    def __init__(self, size: int = 1000, seed: int = 0, words: list[str] | None = None,
                 words_path: str | Path | None = None, split: Split = "train", **kwargs):
        if size < 0:
            raise ValueError(f"{type(self).__name__} size must be >= 0, got {size}")
        self.size, self.seed, self.split = size, seed, split
        if words is not None:
            words = list(dict.fromkeys(words))  # distinct, in the caller's order
            listed = f"given ({len(words):,} words)"
        else:
            words, listed = resolve_word_list(words_path)
        self.words = split_words(words, split)
        if not self.words:
            raise ValueError(f"the word list {listed} has no {split} words: give a longer list")
        self.word_list = f"{listed}, {len(self.words):,} {split} words"  # for logs and the report
        print0(f"{type(self).__name__}: word list {self.word_list}")
        super().__init__(**kwargs)

    def num_examples(self) -> int:
        return self.size

    def _rng(self, index: int) -> random.Random:
        # per-example generator: example i does not depend on which examples were read before it;
        # the class name in the seed keeps SpellingBee and SimpleSpelling from drawing the same words
        return random.Random(f"{type(self).__name__}-{self.seed}-{index}")


_BEE_QUESTIONS = [
    "How many times does the letter '{l}' appear in the word '{w}'?",
    "How many {l}'s are in {w}?",
    "Count the number of '{l}' in \"{w}\".",
    "In the word {w}, how many times does {l} occur?",
    "how many {l} in {w}",
    "What is the count of the letter {l} in '{w}'?",
]


class SpellingBee(_WordTask):
    """Count a letter in a word: spell the word out, then call the calculator with str.count."""

    def get_example(self, index: int) -> dict:
        rng = self._rng(index)
        word = rng.choice(self.words)
        # mostly a letter of the word, sometimes any letter, so that "0" is a possible answer too
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        if rng.random() < 0.3:
            letter = letter.upper()  # users type either case; the count is case-insensitive
        expr = f"'{word}'.count('{letter.lower()}')"
        count = calculate(expr)
        parts = [
            {"type": "text", "text": f"Let me spell '{word}' out: {'-'.join(word)}.\n"
                                     f"Now I count the letter '{letter.lower()}' with the calculator:"},
            {"type": "python", "text": expr},
            {"type": "python_output", "text": count},
            {"type": "text", "text": f"The letter '{letter.lower()}' appears {count} "
                                     f"time{'' if count == '1' else 's'} in '{word}'.\n\n#### {count}"},
        ]
        question = rng.choice(_BEE_QUESTIONS).format(l=letter, w=word)
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": parts}]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        expected = extract_final_number(assistant_text(conversation))
        return numbers_equal(extract_final_number(completion), expected)


_SPELL_QUESTIONS = ["Spell the word: {w}", "How do you spell {w}?", "spell {w}",
                    "Spell '{w}' letter by letter."]


class SimpleSpelling(_WordTask):
    """Spell a word letter by letter; the reply is "word:w,o,r,d"."""

    def get_example(self, index: int) -> dict:
        rng = self._rng(index)
        word = rng.choice(self.words)
        return {"messages": [{"role": "user", "content": rng.choice(_SPELL_QUESTIONS).format(w=word)},
                             {"role": "assistant", "content": f"{word}:{','.join(word)}"}]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        # compare only the letters after the colon, so spacing and the echoed word do not matter
        expected = assistant_text(conversation).split(":", 1)[1]
        got = completion.split(":", 1)[-1]
        return [c for c in got.lower() if c.isalpha()] == [c for c in expected if c.isalpha()]
