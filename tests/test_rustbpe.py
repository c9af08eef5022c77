"""Tests of nanochat.rustbpe, the Rust BPE trainer: its splitter against the `regex` module,
its merges against a plain Python reference BPE, streaming options, errors, and tiktoken
round trips with the trained ranks."""

import ast
import random
import sysconfig
from pathlib import Path

import pytest
import regex
import tiktoken

from nanochat import rustbpe
from tests.bpe_reference import train_reference

# GPT-2's pattern: not one of the two built-in patterns, so it exercises the regex engine path
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Written for these tests. Korean is three bytes a syllable in UTF-8, so byte merges matter.
KOREAN = """\
오늘 아침에는 비가 조금 내렸지만 오후가 되자 하늘이 맑게 개었다. 우리는 강가를 따라 천천히
걸으면서 새로 생긴 빵집에 들렀다. 빵집 주인은 매일 새벽 네 시에 일어나 반죽을 준비한다고
말했다. 나는 호두가 들어간 식빵을 두 개 샀고, 친구는 단팥빵을 골랐다. 정말 맛있었어요 😋🍞
다음에 또 가요! 👍👍 날씨 최고 ☀️🌈

컴퓨터가 글을 읽으려면 먼저 문장을 작은 조각으로 나누어야 한다. 이 조각을 토큰이라고 부르며,
자주 함께 나타나는 글자들은 하나의 토큰으로 합쳐진다. 한국어는 한 글자가 세 바이트로 표현되기
때문에 바이트 단위의 병합이 특히 중요하다. 2024년 12월 31일, 기온은 영하 3도였다.
고양이 🐱 강아지 🐶 가족 👨‍👩‍👧‍👦 그리고 숫자 1234567 와 영어 words 가 섞인 문장도 있다.
"""

ENGLISH = (
    "The quick brown fox jumps over the lazy dog. It's 12:45 and we're testing 1,234,567 numbers!\n"
    "  Indented lines,\ttabs, and trailing spaces   \r\n"
    "def square(x):\n    return x ** 2  # don't panic\n\n\n"
)

# Characters on the edges of the pattern's classes. \x1c-\x1f are left out: Python's `regex`
# counts them as \s and Unicode (so fancy-regex) does not.
ALPHABET = list("abcxyzABCXYZsdmtlverSDMTLVER0123456789'''\"’.,;:!?-_()[]#$%&*+/=\\@ ")
ALPHABET += (
    " |  |\t|\n|\r\n|\r|\x0b|\x0c|\x85|\xa0|\u2028|\u3000|ſ|\u212a|한|국|어|中|文|😀|👍🏽|\u200d|é"
    "|e\u0301|\u0663|\u0967|²|½|Ⅻ|\u200b|\x00|\x7f"
).split("|")


def random_texts(seed, n, max_len):
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(max_len))) for _ in range(n)]


def stdlib_docstrings(limit_chars):
    """Docstrings of the standard library's top-level modules, about `limit_chars` in all."""
    docs, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
                    total += len(doc)
        if total >= limit_chars:
            break
    return docs


@pytest.fixture(scope="module")
def docstrings():
    docs = stdlib_docstrings(300_000)
    assert sum(map(len, docs)) >= 300_000
    return docs


# --- the splitter ---------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", [rustbpe.SPLIT_PATTERN, rustbpe.GPT4_SPLIT_PATTERN, GPT2_PATTERN])
def test_split_matches_regex_module(pattern):
    texts = [ENGLISH, KOREAN, "", " ", "\n", "'ſ 'S 'LL 'Ve 're", "x  \n\n  y   "]
    texts += random_texts(seed=0, n=3000, max_len=30)
    for text in texts:
        assert rustbpe.split(text, pattern) == regex.findall(pattern, text), repr(text)


def test_split_defaults_and_patterns():
    assert rustbpe.split("Hello world's 12345") == ["Hello", " world", "'s", " ", "12", "34", "5"]
    assert rustbpe.split("12345", rustbpe.GPT4_SPLIT_PATTERN) == ["123", "45"]
    assert rustbpe.GPT4_SPLIT_PATTERN == rustbpe.SPLIT_PATTERN.replace(r"\p{N}{1,2}", r"\p{N}{1,3}")


# --- merges against the reference -----------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merges_match_reference_on_random_texts(seed):
    texts = random_texts(seed=seed, n=300, max_len=60)
    vocab_size = 300 + 40 * seed
    trained = rustbpe.train(texts, vocab_size)
    assert trained.merges == train_reference(texts, vocab_size, rustbpe.SPLIT_PATTERN)


def test_merges_match_reference_on_docstrings(docstrings):
    # deep enough that late merges, with many ties at small counts, are compared too
    trained = rustbpe.train(iter(docstrings), 2000)
    assert len(trained.merges) == 2000 - 256
    assert trained.merges == train_reference(docstrings, 2000, rustbpe.SPLIT_PATTERN)


@pytest.mark.parametrize("pattern", [rustbpe.SPLIT_PATTERN, rustbpe.GPT4_SPLIT_PATTERN, GPT2_PATTERN])
def test_merges_match_reference_on_korean_and_emoji(pattern):
    texts = KOREAN.splitlines() * 3 + [ENGLISH]
    trained = rustbpe.train(texts, 450, pattern)
    assert trained.pattern == pattern
    assert trained.merges == train_reference(texts, 450, pattern)


def test_ties_go_to_the_smallest_pair():
    # "ab" and "cd" both occur once: (97, 98) < (99, 100), whatever the order of the texts
    assert rustbpe.train(["ab", "cd"], 257).merges == [(97, 98)]
    assert rustbpe.train(["cd", "ab"], 257).merges == [(97, 98)]
    # the left id decides first: (98, 99) < (99, 97)
    assert rustbpe.train(["ca", "bc"], 257).merges == [(98, 99)]


def test_overlapping_pairs():
    # "aaa" holds (a, a) twice, and merges left to right into [aa, a]
    assert rustbpe.train(["aaa"], 300).merges == [(97, 97), (256, 97)]


# --- streaming options ------------------------------------------------------------------------


def test_buffer_size_and_threads_do_not_change_merges(docstrings):
    texts = docstrings[:400]
    base = rustbpe.train(texts, 500).merges
    assert rustbpe.train(iter(texts), 500, buffer_size=1).merges == base
    assert rustbpe.train(iter(texts), 500, buffer_size=10**6).merges == base
    assert rustbpe.train(iter(texts), 500, num_threads=1).merges == base
    assert rustbpe.train(iter(texts), 500, num_threads=2, buffer_size=7).merges == base


def test_doc_cap_truncates_characters_not_bytes():
    texts = [KOREAN, ENGLISH, "짧다", ""]
    capped = rustbpe.train(texts, 400, doc_cap=50)
    expected = rustbpe.train([t[:50] for t in texts], 400)
    assert capped.merges == expected.merges
    assert capped.stats["bytes"] == sum(len(t[:50].encode()) for t in texts)
    assert rustbpe.train(texts, 400, doc_cap=0).merges == rustbpe.train(texts, 400).merges


def test_stats():
    trained = rustbpe.train(["hello world", "hello"], 260)
    stats = trained.stats
    assert set(stats) == {"docs", "bytes", "unique_pieces", "count_seconds", "merge_seconds"}
    assert (stats["docs"], stats["bytes"], stats["unique_pieces"]) == (2, 16, 2)
    assert stats["count_seconds"] >= 0 and stats["merge_seconds"] >= 0


# --- edge cases and errors --------------------------------------------------------------------


def test_edge_cases():
    assert rustbpe.train(iter([]), 1000).merges == []
    assert rustbpe.train(["", "", "a"], 1000).merges == []
    assert rustbpe.train(["hello"], 256).merges == []
    # the corpus runs out of pairs long before the vocabulary is full: stop early, no error
    trained = rustbpe.train(["hello world"], 100_000)
    assert trained.merges == train_reference(["hello world"], 100_000, rustbpe.SPLIT_PATTERN)
    assert len(trained.merges) == len("hello") - 1 + len(" world") - 1


def test_lone_surrogates_become_replacement_characters():
    # a surrogate pair joins into one character; a lone surrogate becomes U+FFFD
    text = "ab\ud83d\ude00cd \ud800 ef\udfff"
    fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert fixed == "ab😀cd \ufffd ef\ufffd"
    assert rustbpe.split(text) == rustbpe.split(fixed)
    assert rustbpe.train([text] * 3, 300).merges == rustbpe.train([fixed] * 3, 300).merges


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        rustbpe.train(["a"], 255)
    with pytest.raises(ValueError, match="pattern"):
        rustbpe.train(["a"], 300, "(unclosed")
    with pytest.raises(ValueError, match="pattern"):
        rustbpe.split("a", "(unclosed")
    with pytest.raises(TypeError, match="item 1 is of type int"):
        rustbpe.train(["a", 5], 300)
    with pytest.raises(TypeError, match="bytes"):
        rustbpe.train([b"a"], 300)
    with pytest.raises(TypeError):
        rustbpe.train(5, 300)
    with pytest.raises(TypeError, match="split"):
        rustbpe.split(b"a")
    with pytest.raises(ValueError, match="buffer_size"):
        rustbpe.train(["a"], 300, buffer_size=0)
    with pytest.raises(ValueError, match="doc_cap"):
        rustbpe.train(["a"], 300, doc_cap=-1)
    with pytest.raises(ValueError, match="num_threads"):
        rustbpe.train(["a"], 300, num_threads=-1)


def test_iterator_exceptions_propagate_unchanged():
    class Boom(Exception):
        pass

    def texts():
        yield "hello"
        raise Boom("from the iterator")

    with pytest.raises(Boom, match="from the iterator"):
        rustbpe.train(texts(), 300, buffer_size=1)


def test_trained_is_frozen():
    trained = rustbpe.train(["hello"], 260)
    with pytest.raises(AttributeError):
        trained.merges = []


# --- the trained ranks ------------------------------------------------------------------------


def test_mergeable_ranks():
    trained = rustbpe.train([ENGLISH, KOREAN], 400)
    ranks = trained.mergeable_ranks()
    assert [rank for _, rank in ranks] == list(range(256 + len(trained.merges)))
    assert [token for token, _ in ranks[:256]] == [bytes([b]) for b in range(256)]
    for i, (left, right) in enumerate(trained.merges):
        assert ranks[256 + i][0] == ranks[left][0] + ranks[right][0]
    assert len({token for token, _ in ranks}) == len(ranks)


def test_tiktoken_round_trip(docstrings):
    trained = rustbpe.train(docstrings[:300] + KOREAN.splitlines(), 1000)
    enc = tiktoken.Encoding(
        name="t", pat_str=trained.pattern, mergeable_ranks=dict(trained.mergeable_ranks()), special_tokens={}
    )
    for text in [ENGLISH, KOREAN, "😀👍🏽 👨‍👩‍👧‍👦", "", docstrings[0]]:
        ids = enc.encode(text)
        assert enc.decode(ids) == text
        assert len(ids) <= len(text.encode())
    assert len(enc.encode(ENGLISH)) < 0.7 * len(ENGLISH.encode())


def test_same_merges_as_pypi_rustbpe(docstrings):
    # an independent implementation with the same rule; installed with the `bench` extra
    pypi_rustbpe = pytest.importorskip("rustbpe")
    if not hasattr(pypi_rustbpe, "Tokenizer"):
        pytest.skip("`rustbpe` is not the PyPI package")
    theirs = pypi_rustbpe.Tokenizer()
    theirs.train_from_iterator(iter(docstrings), 3000, pattern=rustbpe.SPLIT_PATTERN)
    ours = rustbpe.train(iter(docstrings), 3000)
    assert sorted(theirs.get_mergeable_ranks(), key=lambda kv: kv[1]) == ours.mergeable_ranks()
