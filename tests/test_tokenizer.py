"""Tests for nanochat.tokenizer: exact ids and masks on a byte-level vocabulary, parity with a slow
pure-Python BPE trainer and encoder, save/load and its errors, and encode/decode round trips."""

import base64
import json
import logging
import random
import sys

import numpy as np
import pytest
import regex

import nanochat
from nanochat.tokenizer import FILE_NAME, SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer
from tests.bpe_reference import merge_pair, train_reference

# ---- a slow reference: BPE training and encoding by the rules the Rust trainer follows


def py_train(texts, n_tokens, pattern=SPLIT_PATTERN):
    """The reference merges (tests/bpe_reference.py) and the ranks they define."""
    merges = train_reference(texts, n_tokens, pattern)
    vocab = [bytes([b]) for b in range(256)]
    for left, right in merges:
        vocab.append(vocab[left] + vocab[right])
    ranks = {token: rank for rank, token in enumerate(vocab)}
    assert len(ranks) == len(vocab), "two merges produced the same bytes"
    return merges, ranks


def py_encode(text, merges, pattern=SPLIT_PATTERN):
    """Encode by replaying the merges in training order on every chunk."""
    out = []
    for chunk in regex.findall(pattern, text):
        ids = list(chunk.encode("utf-8"))
        for rank, pair in enumerate(merges):
            if len(ids) < 2:
                break
            ids = merge_pair(ids, pair, 256 + rank)
        out.extend(ids)
    return out


def make_corpus(seed=0, n_docs=40):
    """Deterministic text with a skewed word distribution (so BPE has pairs worth merging), Korean,
    emoji, numbers, contractions, punctuation, code and newlines."""
    rng = random.Random(seed)
    pieces = ["th", "e", "an", "in", "er", "on", "re", "ing", "st", "a", "o", "하", "는", "다", "이", "에"]
    words = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 4))) for _ in range(200)]
    extras = ["don't", "we'll", "😀", "x = f(1)\n    return x", "\n\n", "  ", "e\u0301", "1234567"]
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(20, 60)):
            r = rng.random()
            if r < 0.05:
                parts.append(str(rng.randint(0, 99999)))
            elif r < 0.12:
                parts.append(rng.choice(extras))
            else:
                word = words[int(rng.paretovariate(1.0)) % len(words)]
                parts.append(word.capitalize() + rng.choice(".,!?") if r < 0.2 else word)
        docs.append(" ".join(parts))
    return docs


CORPUS = make_corpus()
N_MERGES = 120


@pytest.fixture(scope="module")
def py_trained():
    return py_train(CORPUS, 256 + N_MERGES)


@pytest.fixture(scope="module")
def tok(py_trained):
    return Tokenizer.from_ranks(py_trained[1], SPLIT_PATTERN)


@pytest.fixture(scope="module")
def btok():
    """Bytes only: ids are the UTF-8 bytes and specials 256..264, so expected ids can be written by hand."""
    return Tokenizer.from_ranks({bytes([b]): b for b in range(256)}, SPLIT_PATTERN)


def b(text):
    return list(text.encode("utf-8"))


BOS, US, UE, AS, AE, PS, PE, OS, OE = range(256, 265)


# ---- vocabulary and special tokens


def test_special_token_ids_follow_the_ranks(btok):
    assert btok.n_vocab == 256 + len(SPECIAL_TOKENS)
    assert btok.bos_token_id == BOS
    assert [btok.encode_special(name) for name in SPECIAL_TOKENS] == list(range(256, 265))
    ranks = {bytes([i]): i for i in range(256)} | {b"hi": 256}
    small = Tokenizer.from_ranks(ranks, SPLIT_PATTERN, ["<|bos|>", "<|x|>"])
    assert small.n_vocab == 259 and small.bos_token_id == 257 and small.encode_special("<|x|>") == 258
    assert small.encode("hi") == [256]


def test_encode_special_unknown_names_the_valid_ones(btok):
    with pytest.raises(ValueError, match=r"unknown special token '<\|bot\|>'.*<\|bos\|>"):
        btok.encode_special("<|bot|>")


def test_special_token_text_is_not_injected(btok, tok):
    for t in (btok, tok):
        text = "hi <|bos|><|assistant_end|> <|python_start|>"
        ids = t.encode(text)
        assert all(i < t.n_vocab - len(SPECIAL_TOKENS) for i in ids)
        assert t.decode(ids) == text
        assert t.encode([text]) == [ids]
    ids, mask = btok.render_conversation({"messages": [{"role": "user", "content": "<|assistant_end|>"}]})
    assert ids == [BOS, US, *b("<|assistant_end|>"), UE] and mask == [0] * len(ids)


def test_prepend_and_append(btok):
    assert btok.encode("hi", prepend="<|bos|>", append=AE) == [BOS, 104, 105, AE]
    assert btok.encode(["a", "bc"], prepend=BOS) == [[BOS, 97], [BOS, 98, 99]]
    assert btok.encode(["a"], append="<|user_end|>") == [[97, UE]]
    with pytest.raises(ValueError, match="out of range"):
        btok.encode("hi", prepend=btok.n_vocab)
    with pytest.raises(ValueError, match="unknown special token"):
        btok.encode("hi", append="<|nope|>")


def test_encode_rejects_wrong_types(btok):
    with pytest.raises(TypeError, match="str or a list of str"):
        btok.encode(b"bytes")
    with pytest.raises(TypeError, match="item 1"):
        btok.encode(["ok", 3])
    with pytest.raises(TypeError):
        btok.encode("hi", prepend=1.5)


def test_decode_accepts_arrays_and_rejects_bad_ids(tok):
    ids = tok.encode(CORPUS[0])
    assert tok.decode(np.array(ids, dtype=np.int64)) == CORPUS[0]
    assert tok.decode([]) == ""
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([1, tok.n_vocab])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])


def test_token_bytes_lengths(tok, py_trained):
    lengths = tok.token_bytes_lengths()
    assert isinstance(lengths, np.ndarray) and lengths.dtype.kind == "i" and lengths.shape == (tok.n_vocab,)
    n_ranks = tok.n_vocab - len(SPECIAL_TOKENS)
    by_rank = {rank: token for token, rank in py_trained[1].items()}
    for i in range(n_ranks):
        assert tok.id_to_token_bytes(i) == by_rank[i]
        assert lengths[i] == len(by_rank[i])
    assert lengths[n_ranks:].tolist() == [0] * len(SPECIAL_TOKENS)
    assert tok.id_to_token_bytes(tok.bos_token_id) == b"<|bos|>"
    # the lengths of a text's tokens add up to its UTF-8 length: what bits-per-byte relies on
    ids = tok.encode(CORPUS[1], prepend="<|bos|>")
    assert lengths[ids].sum() == len(CORPUS[1].encode("utf-8"))
    lengths[0] = 99  # a copy: callers cannot corrupt the tokenizer
    assert tok.token_bytes_lengths()[0] == 1


# ---- parity with the reference trainer and encoder


def test_encoding_matches_merge_replay(tok, py_trained):
    merges, _ = py_trained
    assert len(merges) == N_MERGES
    held_out = make_corpus(seed=1, n_docs=10)
    for text in CORPUS[:10] + held_out:
        assert tok.encode(text) == py_encode(text, merges)
    # merges actually fire: the trained vocabulary compresses its own text
    assert len(tok.encode(CORPUS[0])) < 0.7 * len(CORPUS[0].encode("utf-8"))


def test_encoding_matches_merge_replay_on_repeats():
    # runs like "aaaaa" are where non-overlapping merges and tiktoken's lowest-rank-first order could
    # part ways; they must not
    for seed in range(5):
        rng = random.Random(seed)
        texts = [" ".join(rng.choice("ab") * rng.randint(1, 12) + rng.choice(["", "b", "ab"]) for _ in range(30))]
        merges, ranks = py_train(texts, 256 + 30)
        t = Tokenizer.from_ranks(ranks, SPLIT_PATTERN)
        for n in range(1, 30):
            for s in ("a" * n, "ab" * n, "a" * n + "b" + "a" * (n // 2), " " + "ba" * n):
                assert t.encode(s) == py_encode(s, merges), (seed, s)


def test_batch_encode_equals_single_encodes(tok):
    docs = CORPUS + ["", "\ud800 lone", "<|bos|>"]
    assert tok.encode(docs) == [tok.encode(d) for d in docs]
    assert tok.encode(docs, num_threads=1) == tok.encode(tuple(docs), num_threads=3)
    assert tok.encode([]) == []


# ---- round trips over all of Unicode


def normalise(s):
    return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def random_strings(seed, n):
    rng = random.Random(seed)
    ranges = [
        (0, 0x10FFFF),  # anything, surrogates included
        (0x20, 0x7E),  # ASCII
        (0xAC00, 0xD7A3),  # Korean syllables
        (0x1F300, 0x1FAFF),  # emoji
        (0x0300, 0x036F),  # combining marks
        (0xD800, 0xDFFF),  # surrogates, lone or accidentally paired
        (0, 0),  # NUL
        (0x09, 0x0D),  # tabs and newlines
    ]
    out = [""]
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(0, 40)):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)))
        out.append("".join(chars))
    return out


def is_valid(s):
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def test_round_trip_random_unicode(btok, tok):
    texts = random_strings(seed=0, n=400)
    assert sum(not is_valid(s) for s in texts) > 50  # the lone-surrogate path is really exercised
    for t in (btok, tok):
        batch = t.encode(texts)
        for s, ids in zip(texts, batch):
            assert t.encode(s) == ids
            back = t.decode(ids)
            assert back == normalise(s)
            if is_valid(s):
                assert back == s


def test_surrogates_are_normalised():
    t = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
    assert t.decode(t.encode("a\ud83d\ude00b")) == "a\U0001f600b"  # a pair joins into its character
    assert t.encode("a\ud83d\ude00b") == t.encode("a\U0001f600b")
    assert t.decode(t.encode("\ud800x\udfff")) == "\ufffdx\ufffd"  # each lone one becomes U+FFFD
    assert t.decode(t.encode("\ude00\ud83d")) == "\ufffd\ufffd"  # a reversed pair is two lone ones


# ---- chat rendering: exact ids and masks on the byte-level vocabulary


def conv(*messages):
    return {"messages": [{"role": role, "content": content} for role, content in messages]}


def test_render_text_conversation(btok):
    c = conv(("user", "hi"), ("assistant", "ok"), ("user", "?"), ("assistant", "!"))
    ids, mask = btok.render_conversation(c)
    assert ids == [BOS, US, 104, 105, UE, AS, 111, 107, AE, US, 63, UE, AS, 33, AE]
    assert mask == [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1]


def test_render_tool_call(btok):
    parts = [
        {"type": "text", "text": "a"},
        {"type": "python", "text": "1+1"},
        {"type": "python_output", "text": "2"},
        {"type": "text", "text": "b"},
    ]
    ids, mask = btok.render_conversation(conv(("user", "q"), ("assistant", parts)))
    assert ids == [BOS, US, 113, UE, AS, 97, PS, 49, 43, 49, PE, OS, 50, OE, 98, AE]
    assert mask == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1]
    # a tool that prints nothing still gets its delimiters
    ids, mask = btok.render_conversation(conv(("user", "q"), ("assistant", [
        {"type": "python", "text": "x"}, {"type": "python_output", "text": ""}])))
    assert ids[4:] == [AS, PS, 120, PE, OS, OE, AE] and mask[4:] == [0, 1, 1, 1, 0, 0, 1]


def test_render_system_prompt(btok):
    ids, mask = btok.render_conversation(conv(("system", "S"), ("user", "hi"), ("assistant", "ok")))
    assert ids == [BOS, US, 83, 10, 10, 104, 105, UE, AS, 111, 107, AE]
    assert mask == [0] * 9 + [1, 1, 1]


def test_render_truncates(btok):
    full, full_mask = btok.render_conversation(conv(("user", "hello"), ("assistant", "world")))
    ids, mask = btok.render_conversation(conv(("user", "hello"), ("assistant", "world")), max_tokens=9)
    assert ids == full[:9] and mask == full_mask[:9] and len(ids) == 9
    ids, mask = btok.render_conversation(conv(("user", "hello"), ("assistant", "world")), max_tokens=None)
    assert ids == full


def test_render_with_trained_vocab_is_consistent(tok):
    c = conv(("user", CORPUS[2][:200]), ("assistant", CORPUS[3][:200]))
    ids, mask = tok.render_conversation(c, max_tokens=10_000)
    answer = tok.encode(CORPUS[3][:200])
    start, end = tok.encode_special("<|assistant_start|>"), tok.encode_special("<|assistant_end|>")
    assert ids[-len(answer) - 2:] == [start, *answer, end]
    assert sum(mask) == len(answer) + 1
    assert tok.decode(ids) == ("<|bos|><|user_start|>" + CORPUS[2][:200] + "<|user_end|><|assistant_start|>"
                               + CORPUS[3][:200] + "<|assistant_end|>")


def test_render_for_completion(btok):
    prompt = btok.render_for_completion(conv(("user", "hi"), ("assistant", "ok")))
    assert prompt == [BOS, US, 104, 105, UE, AS]
    # a conversation waiting for its reply (chat UI) renders the same way
    assert btok.render_for_completion(conv(("user", "hi"))) == prompt
    c = conv(("system", "S"), ("user", "hi"), ("assistant", "ok"), ("user", "x"), ("assistant", "y"))
    prompt = btok.render_for_completion(c)
    assert prompt == [BOS, US, 83, 10, 10, 104, 105, UE, AS, 111, 107, AE, US, 120, UE, AS]


BAD_CONVERSATIONS = [
    ([], "must be a dict"),
    ({}, "no messages"),
    ({"messages": []}, "no messages"),
    ({"messages": "hi"}, "no messages"),
    ({"messages": ["hi"]}, "message 0 must be a dict"),
    ({"messages": [{"role": "user"}]}, "message 0 must be a dict with 'role' and 'content'"),
    (conv(("bot", "hi")), "message 0 has unknown role 'bot'"),
    (conv(("assistant", "hi")), "message 0 has role 'assistant' where 'user' was expected"),
    (conv(("user", "a"), ("user", "b")), "message 1 has role 'user' where 'assistant' was expected"),
    (conv(("user", "a"), ("assistant", "b"), ("assistant", "c")), "message 2 has role 'assistant'"),
    (conv(("system", "s"), ("assistant", "b")), "message 1 has role 'assistant' where 'user'"),
    (conv(("user", "a"), ("system", "s")), "message 1 is a system message"),
    (conv(("system", "s")), "no user message"),
    (conv(("user", "")), r"message 0 \(user\) has empty content"),
    (conv(("user", "a"), ("assistant", "")), r"message 1 \(assistant\) has empty content"),
    (conv(("system", ""), ("user", "a")), r"message 0 \(system\) has empty content"),
    (conv(("user", "a"), ("assistant", [])), r"message 1 \(assistant\) has empty content"),
    (conv(("user", ["a"])), r"message 0 \(user\) content must be a str, got list"),
    (conv(("user", "a"), ("assistant", 3)), r"content must be a str or a list of parts, got int"),
    (conv(("system", None), ("user", "a")), r"message 0 \(system\) content must be a str"),
    (conv(("user", "a"), ("assistant", [{"type": "image", "text": "x"}])),
     "message 1 part 0 has unknown type 'image'"),
    (conv(("user", "a"), ("assistant", ["x"])), "message 1 part 0 must be a dict"),
    (conv(("user", "a"), ("assistant", [{"type": "text"}])),
     "message 1 part 0 must be a dict with 'type' and 'text'"),
    (conv(("user", "a"), ("assistant", [{"type": "text", "text": "x"}, {"type": "python", "text": 5}])),
     r"message 1 part 1 \(python\) text must be a str, got int"),
    (conv(("user", "a"), ("assistant", [{"type": "python", "text": ""}])),
     r"message 1 part 0 \(python\) has empty text"),
]


@pytest.mark.parametrize("conversation,message", BAD_CONVERSATIONS)
def test_render_errors(btok, conversation, message):
    with pytest.raises(ValueError, match=message):
        btok.render_conversation(conversation)
    with pytest.raises(ValueError, match=message):
        btok.render_for_completion(conversation)


# ---- construction errors


@pytest.mark.parametrize("ranks,pattern,specials,message", [
    ({bytes([i]): i for i in range(255)}, SPLIT_PATTERN, SPECIAL_TOKENS,
     r"1 of the 256 single-byte tokens are missing: 0xff"),
    ({bytes([i]): i for i in range(256)} | {b"ab": 257}, SPLIT_PATTERN, SPECIAL_TOKENS, r"must be 0\.\.256"),
    ({bytes([i]): i for i in range(256)} | {b"": 256}, SPLIT_PATTERN, SPECIAL_TOKENS, "non-empty bytes"),
    ({bytes([i]): i for i in range(256)}, "(", SPECIAL_TOKENS, "does not compile"),
    ({bytes([i]): i for i in range(256)}, SPLIT_PATTERN, ["<|a|>", "<|a|>"], "distinct"),
    ({bytes([i]): i for i in range(256)}, SPLIT_PATTERN, "<|bos|>", "list of str"),
])
def test_from_ranks_validates(ranks, pattern, specials, message):
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_ranks(ranks, pattern, specials)


# ---- save and load


def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "tokenizer")
    assert [p.name for p in (tmp_path / "tokenizer").iterdir()] == [FILE_NAME]  # no temp file left behind
    data = json.loads(open(path, encoding="utf-8").read())
    assert data["format"] == "nanochat-bpe" and data["version"] == 1 and data["pattern"] == SPLIT_PATTERN
    assert base64.b64decode(data["ranks"][65]) == b"A"
    assert data["special_tokens"]["<|bos|>"] == len(data["ranks"])
    loaded = Tokenizer.load(tmp_path / "tokenizer")
    assert loaded.n_vocab == tok.n_vocab and loaded.special_tokens == tok.special_tokens
    assert loaded.encode(CORPUS) == tok.encode(CORPUS)
    assert (loaded.token_bytes_lengths() == tok.token_bytes_lengths()).all()
    tok.save(tmp_path / "tokenizer")  # overwriting an existing save works
    assert Tokenizer.load(str(tmp_path / "tokenizer")).encode(CORPUS[0]) == tok.encode(CORPUS[0])


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m scripts\.tok_train"):
        Tokenizer.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer at .*tokenizer\.json"):
        Tokenizer.load(tmp_path / "empty")


def _corrupt_cases():
    """(name, function editing the saved JSON dict or returning replacement text, expected message)."""
    def edit(**changes):
        return lambda d: {**d, **changes}

    def drop(key):
        return lambda d: {k: v for k, v in d.items() if k != key}

    def swap_ranks(d):
        ranks = list(d["ranks"])
        ranks[66] = ranks[65]
        return {**d, "ranks": ranks}

    def drop_byte(d):
        specials = {k: v - 1 for k, v in d["special_tokens"].items()}
        return {**d, "ranks": d["ranks"][1:], "special_tokens": specials, "token_bytes": d["token_bytes"][1:]}

    return [
        ("not json", lambda d: '{"format": "nanochat-bpe", ', "Expecting"),
        ("not an object", lambda d: "[1, 2]", "top level is a list"),
        ("not utf-8", lambda d: b"\xff\xfe{", "codec can't decode"),
        ("format", edit(format="tiktoken"), "format is 'tiktoken'"),
        ("version", edit(version=2), "version is 2"),
        ("version bool", edit(version=True), "version is True"),
        ("no pattern", drop("pattern"), "field 'pattern' is missing"),
        ("ranks type", edit(ranks={}), "field 'ranks' is missing or not a list"),
        ("bad pattern", edit(pattern="(unclosed"), "does not compile"),
        ("bad base64", lambda d: {**d, "ranks": ["!!"] + d["ranks"][1:]}, r"ranks\[0\] is not a base64"),
        ("duplicate", swap_ranks, "ranks are not unique"),
        ("missing byte", drop_byte, "single-byte tokens are missing: 0x00"),
        ("specials gap", lambda d: {**d, "special_tokens": {**d["special_tokens"], "<|bos|>": 10**6}},
         "not contiguous"),
        ("specials type", lambda d: {**d, "special_tokens": {"<|bos|>": "x"}}, "integer ids"),
        ("token bytes", lambda d: {**d, "token_bytes": d["token_bytes"][:-1]}, "token_bytes do not match"),
        ("deeply nested", lambda d: "[" * 100_000 + "]" * 100_000, "maximum recursion depth exceeded"),
        ("empty match", edit(pattern=r"\p{L}+|\s*"), "matches empty text"),
        ("backtracking", edit(pattern=BACKTRACKING), "needs unbounded backtracking"),
        ("skips text", edit(pattern=r"\p{L}+"), "skips characters"),
    ]


# Compiles everywhere and splits short texts fine, but a run of 'a's makes fancy-regex (tiktoken's engine)
# backtrack exponentially: tiktoken panics at its backtracking limit mid-encode, Python's regex hangs.
BACKTRACKING = r"(?:a|a)*(?!x)b|[\s\S]"


def test_bad_patterns_are_caught_without_rustbpe(monkeypatch):
    # without the Rust extension the probe goes through tiktoken itself, whose panic becomes the error
    monkeypatch.setitem(sys.modules, "nanochat.rustbpe", None)  # `import` now raises ImportError
    monkeypatch.delattr(nanochat, "rustbpe", raising=False)
    ranks = {bytes([i]): i for i in range(256)}
    for pattern, message in ((BACKTRACKING, "makes tiktoken fail"), (r"\p{L}+|\s*", "makes tiktoken fail"),
                             (r"\p{L}+", "skips characters")):
        with pytest.raises(ValueError, match=message):
            Tokenizer.from_ranks(ranks, pattern)
    assert Tokenizer.from_ranks(ranks, SPLIT_PATTERN).encode("ok") == [111, 107]


@pytest.mark.parametrize("name,corrupt,message", _corrupt_cases(), ids=[c[0] for c in _corrupt_cases()])
def test_load_corrupted(btok, tmp_path, name, corrupt, message):
    path = btok.save(tmp_path)
    data = json.loads(open(path, encoding="utf-8").read())
    new = corrupt(data)
    if isinstance(new, bytes):
        open(path, "wb").write(new)
    else:
        open(path, "w", encoding="utf-8").write(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(ValueError) as info:
        Tokenizer.load(tmp_path)
    text = str(info.value)
    assert regex.search(message, text), text
    assert "\n" not in text and text.endswith("retrain with python -m scripts.tok_train")
    assert str(path) in text


# ---- training with the Rust extension (skipped only when it is not built)


def rustbpe_or_skip():
    return pytest.importorskip("nanochat.rustbpe", reason="the Rust extension nanochat.rustbpe is not built")


def test_split_pattern_matches_rustbpe():
    assert rustbpe_or_skip().SPLIT_PATTERN == SPLIT_PATTERN


def test_train_from_iterator_matches_reference(py_trained, tmp_path):
    rustbpe_or_skip()
    vocab_size = 256 + N_MERGES + len(SPECIAL_TOKENS)
    tok = Tokenizer.train_from_iterator(iter(CORPUS), vocab_size, num_threads=2, buffer_size=7)
    assert tok.n_vocab == vocab_size
    assert tok.pattern == SPLIT_PATTERN
    _, ref_ranks = py_trained
    assert [tok.id_to_token_bytes(i) for i in range(256 + N_MERGES)] == sorted(ref_ranks, key=ref_ranks.get)
    assert tok.bos_token_id == 256 + N_MERGES
    assert tok.encode(CORPUS) == Tokenizer.from_ranks(ref_ranks, SPLIT_PATTERN).encode(CORPUS)
    tok.save(tmp_path)
    assert Tokenizer.load(tmp_path).encode(CORPUS[0]) == tok.encode(CORPUS[0])


def test_train_from_iterator_stops_early_with_a_warning(caplog):
    rustbpe_or_skip()
    with caplog.at_level(logging.WARNING, logger="nanochat.tokenizer"):
        tok = Tokenizer.train_from_iterator(["abab abab"], 1000)
    assert tok.n_vocab < 1000
    assert tok.decode(tok.encode("abab abc")) == "abab abc"
    assert any("ran out of pairs" in r.getMessage() for r in caplog.records)


def test_train_from_iterator_vocab_too_small():
    # checked before the extension is needed, so this runs everywhere
    with pytest.raises(ValueError, match=r"vocab_size must be an int >= 265"):
        Tokenizer.train_from_iterator(["abc"], 264)


def test_parse_assistant_inverts_rendering_of_tool_use():
    tok = Tokenizer.from_ranks({bytes([i]): i for i in range(256)}, SPLIT_PATTERN)
    parts = [{"type": "text", "text": "Let me compute. "}, {"type": "python", "text": "2+3"},
             {"type": "python_output", "text": "5"}, {"type": "text", "text": "It is 5. 한국어 😀"}]
    conv = {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": parts}]}
    ids, _ = tok.render_conversation(conv)
    start = ids.index(tok.encode_special("<|assistant_start|>")) + 1
    generated = ids[start:] + tok.encode("never read")  # reading stops at <|assistant_end|>
    assert tok.parse_assistant(generated) == parts
    assert tok.parse_assistant(tok.encode("plain") + [tok.bos_token_id, 65]) == [{"type": "text", "text": "plain"}]
    assert tok.parse_assistant([]) == []
