"""Byte-level BPE tokenizer: trained by the Rust extension `nanochat.rustbpe`, encoded with tiktoken,
plus the chat layout that turns a conversation into token ids and a loss mask.

Save format: `save(directory)` writes one file, `directory/tokenizer.json`, plain JSON (loading it never
executes code):

    {"format": "nanochat-bpe",        # fixed tag, so a stray JSON file is rejected early
     "version": 1,
     "pattern": "...",                # pre-tokenizer regex (regex / fancy-regex syntax)
     "ranks": ["AA==", ...],          # base64 of each mergeable token's bytes; list index = rank = id
     "special_tokens": {"<|bos|>": N, ...},   # ids N, N+1, ... right after the last rank
     "token_bytes": [1, 1, ..., 0]}   # UTF-8 byte length of every id (0 for special tokens)

The file is written to a temporary name in the same directory and renamed, so a reader sees either the old
tokenizer or the new one, never half of one. `load` checks every field and says what is wrong, in one
line; building a tokenizer also probes its split pattern on sample texts (`_probe_pattern`), so a pattern
that matches empty text, skips text or backtracks without bound fails there, not in the middle of a run.

Surrogates: a Python str may hold lone surrogates (U+D800..U+DFFF) that UTF-8 cannot represent. Such
text is normalised before encoding with `s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")`:
a high+low surrogate pair becomes the character it encodes and every lone surrogate becomes U+FFFD.
tiktoken applies exactly this rule itself, and only after the fast path fails, so valid text pays
nothing. Hence `decode(encode(s)) == s` for every str that UTF-8 can encode, and equals the normalised
text otherwise.

Chat layout (`render_conversation`), with the loss mask (1 = the model is trained to produce it):

    <|bos|>                                             0
    <|user_start|> text <|user_end|>                    0
    <|assistant_start|>                                 0
        text                                            1
        <|python_start|> code <|python_end|>            1  (the model writes its tool calls)
        <|output_start|> output <|output_end|>          0  (the tool writes its output)
    <|assistant_end|>                                   1  (the model must learn to stop)
"""

import base64
import json
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
import regex
import tiktoken

from nanochat.common import write_json_atomic

logger = logging.getLogger(__name__)

# GPT-4's split pattern, except that numbers split into groups of at most 2 digits (not 3): with a small
# vocabulary, fewer number tokens leave room for more word tokens. Must stay equal to
# nanochat.rustbpe.SPLIT_PATTERN (a test checks), so training and encoding chunk text the same way.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

# For Korean runs: SPLIT_PATTERN, except that a run of Hangul and a run of other letters are separate
# pieces. A Korean word (eojeol) stays one piece with its leading space and its particles ("학교에서"),
# exactly as under SPLIT_PATTERN, but a Latin word followed by a particle is cut at the script change
# (" Python으로" -> " Python", "으로"), so the English word reuses the tokens learned from English
# text and the particle those learned from Korean. `[^\P{L}\p{Hangul}]` = a letter not of the Hangul
# script. Cutting particles off Hangul words, or Hangul into single syllables, was measured and
# compresses held-out Korean worse (dev/bench_tokenizer_ko.py, dev/BENCHMARKS.md). Not one of the
# Rust scanner's patterns: the trainer runs it through fancy-regex.
KOREAN_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{Hangul}+|[^\r\n\p{L}\p{N}]?+[^\P{L}\p{Hangul}]+"""
    r"""|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""")
PATTERNS = {"default": SPLIT_PATTERN, "korean": KOREAN_SPLIT_PATTERN}  # tok_train --pattern

SPECIAL_TOKENS = [
    "<|bos|>",  # starts every document and every conversation
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # the assistant calls the python tool ...
    "<|python_end|>",
    "<|output_start|>",  # ... and the tool's output is pasted back in
    "<|output_end|>",
]

FORMAT_NAME = "nanochat-bpe"
FORMAT_VERSION = 1
FILE_NAME = "tokenizer.json"
TRAIN_HINT = "python -m scripts.tok_train"

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "python", "python_output")


class Tokenizer:
    """A byte-level BPE vocabulary (ids 0..len(ranks)-1) followed by special tokens."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN,
                 special_tokens: Sequence[str] = SPECIAL_TOKENS):
        _check_ranks(mergeable_ranks)
        _check_pattern(pattern)
        _check_special_names(special_tokens)
        n_ranks = len(mergeable_ranks)
        self.pattern = pattern
        self._special = {name: n_ranks + i for i, name in enumerate(special_tokens)}
        # id -> bytes for every id; special tokens map to their own text, as tiktoken's decode does
        self._id_bytes: list[bytes] = [b""] * n_ranks
        for token, rank in mergeable_ranks.items():
            self._id_bytes[rank] = token
        self._id_bytes.extend(name.encode("utf-8") for name in special_tokens)
        # text bytes per id, for bits-per-byte: special tokens stand for no text, so they count 0
        lengths = [len(b) for b in self._id_bytes[:n_ranks]] + [0] * len(special_tokens)
        self._token_bytes_lengths = np.array(lengths, dtype=np.int32)
        try:
            self._enc = tiktoken.Encoding("nanochat", pat_str=pattern, mergeable_ranks=dict(mergeable_ranks),
                                          special_tokens=dict(self._special))
        except ValueError as e:  # fancy-regex (tiktoken's engine) can reject what `regex` accepts
            raise ValueError(f"tiktoken rejected the split pattern: {e}") from None
        _probe_pattern(pattern, self._enc)

    # ---- building, saving, loading

    @classmethod
    def train_from_iterator(cls, texts: Iterable[str], vocab_size: int, *, pattern: str = SPLIT_PATTERN,
                            doc_cap: int | None = None, num_threads: int | None = None,
                            buffer_size: int = 8192) -> "Tokenizer":
        """Train BPE on `texts` so that the vocabulary, special tokens included, has `vocab_size` ids.

        doc_cap keeps only the first doc_cap characters of each text (None = whole texts);
        num_threads None = all cores.
        """
        n_special = len(SPECIAL_TOKENS)
        if not isinstance(vocab_size, int) or vocab_size < 256 + n_special:
            raise ValueError(f"vocab_size must be an int >= {256 + n_special} (256 bytes + {n_special} "
                             f"special tokens), got {vocab_size!r}")
        try:  # imported here so that encoding works in environments where the extension is not built
            from nanochat import rustbpe
        except ImportError as e:
            raise ImportError("the Rust BPE trainer nanochat.rustbpe is not built; install the package with "
                              "`uv pip install -e .` (or `pip install -e .`), which compiles it") from e
        trained = rustbpe.train(texts, vocab_size - n_special, pattern, buffer_size=buffer_size,
                                doc_cap=doc_cap or 0, num_threads=num_threads or 0)  # the Rust API's 0 = off
        ranks: dict[bytes, int] = {}
        for token, rank in trained.mergeable_ranks():
            # two merges yielding the same bytes would make rank-based encoding (tiktoken) ambiguous
            assert token not in ranks, f"trainer made token {token!r} twice (ranks {ranks[token]}, {rank})"
            ranks[token] = rank
        tok = cls(ranks, trained.pattern)
        if tok.n_vocab < vocab_size:
            logger.warning("BPE training ran out of pairs to merge: vocabulary has %d ids, %d were asked for "
                           "(give it more text)", tok.n_vocab, vocab_size)
        return tok

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict[bytes, int], pattern: str,
                   special_tokens: Sequence[str] = SPECIAL_TOKENS) -> "Tokenizer":
        """Build from tiktoken-style ranks (token bytes -> rank 0..n-1, all 256 single bytes present)."""
        return cls(mergeable_ranks, pattern, special_tokens)

    def save(self, directory: str | os.PathLike) -> str:
        """Write `directory/tokenizer.json` atomically; returns its path."""
        os.makedirs(directory, exist_ok=True)
        n_ranks = self.n_vocab - len(self._special)
        payload = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "ranks": [base64.b64encode(b).decode("ascii") for b in self._id_bytes[:n_ranks]],
            "special_tokens": dict(self._special),
            "token_bytes": self._token_bytes_lengths.tolist(),
        }
        path = os.path.join(directory, FILE_NAME)
        write_json_atomic(path, payload, indent=1)  # one rank per line: readable and diffable
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Tokenizer":
        path = os.path.join(directory, FILE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tokenizer at {path}; train one with `{TRAIN_HINT}`")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return cls._from_saved(data)
        except (ValueError, RecursionError) as e:  # RecursionError: JSON nested deeper than the parser's stack
            reason = " ".join(str(e).split())  # one line, whatever the underlying error printed
            msg = f"tokenizer file {path} is invalid: {reason}; retrain with {TRAIN_HINT}"
            raise ValueError(msg) from None

    @classmethod
    def _from_saved(cls, data: object) -> "Tokenizer":
        if not isinstance(data, dict):
            raise ValueError(f"top level is a {type(data).__name__}, not an object")
        if data.get("format") != FORMAT_NAME:
            raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT_NAME!r}")
        version = data.get("version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise ValueError(f"version is {version!r}, this code reads version {FORMAT_VERSION}")
        for key, kind in (("pattern", str), ("ranks", list), ("special_tokens", dict), ("token_bytes", list)):
            if not isinstance(data.get(key), kind):
                raise ValueError(f"field {key!r} is missing or not a {kind.__name__}")
        ranks: dict[bytes, int] = {}
        for rank, text in enumerate(data["ranks"]):
            try:
                token = base64.b64decode(text, validate=True)
            except (TypeError, ValueError):  # binascii.Error is a ValueError
                raise ValueError(f"ranks[{rank}] is not a base64 string") from None
            if token in ranks:
                raise ValueError(f"ranks are not unique: token {token!r} is at ranks {ranks[token]} "
                                 f"and {rank}")
            ranks[token] = rank
        special = data["special_tokens"]
        if not all(type(i) is int for i in special.values()):
            raise ValueError("special_tokens must map names to integer ids")
        if sorted(special.values()) != list(range(len(ranks), len(ranks) + len(special))):
            raise ValueError(f"special token ids {sorted(special.values())} are not contiguous right after "
                             f"the {len(ranks)} ranks")
        tok = cls(ranks, data["pattern"], sorted(special, key=special.__getitem__))
        if data["token_bytes"] != tok._token_bytes_lengths.tolist():
            raise ValueError("token_bytes do not match the lengths of the tokens in ranks")
        return tok

    # ---- vocabulary

    @property
    def n_vocab(self) -> int:
        return len(self._id_bytes)

    @property
    def bos_token_id(self) -> int:
        return self.encode_special("<|bos|>")

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    def encode_special(self, name: str) -> int:
        try:
            return self._special[name]
        except KeyError:
            valid = ", ".join(self._special)
            raise ValueError(f"unknown special token {name!r}; valid ones: {valid}") from None

    def id_to_token_bytes(self, token_id: int) -> bytes:
        """The bytes of one id (a special token gives its own text, as in decode)."""
        self._check_id(token_id)
        return self._id_bytes[token_id]

    def token_bytes_lengths(self) -> np.ndarray:
        """int32 array [n_vocab]: UTF-8 bytes each id stands for, 0 for special tokens (bits per byte)."""
        return self._token_bytes_lengths.copy()

    def _check_id(self, token_id: object) -> int:
        if type(token_id) is not int and not isinstance(token_id, np.integer):
            raise TypeError(f"a token id must be an int, got {type(token_id).__name__}")
        if not 0 <= token_id < self.n_vocab:
            raise ValueError(f"token id {token_id} is out of range 0..{self.n_vocab - 1}")
        return int(token_id)

    def _token_id(self, token: int | str) -> int:
        return self.encode_special(token) if isinstance(token, str) else self._check_id(token)

    # ---- encoding and decoding

    def encode(self, text: str | list[str], prepend: int | str | None = None, append: int | str | None = None,
               num_threads: int = 8) -> list[int] | list[list[int]]:
        """Encode a str to ids, or a list of str to a list of id lists (in parallel threads).

        Special-token text inside `text` is encoded as ordinary text, so a user who types "<|bos|>"
        cannot inject a control token; control tokens enter only through prepend/append (a name or an
        id) or render_conversation.
        """
        head = [] if prepend is None else [self._token_id(prepend)]
        tail = [] if append is None else [self._token_id(append)]
        if isinstance(text, str):
            return head + self._enc.encode_ordinary(text) + tail
        if isinstance(text, (list, tuple)):
            for i, t in enumerate(text):
                if not isinstance(t, str):
                    raise TypeError(f"encode: item {i} of the batch is a {type(t).__name__}, not a str")
            rows = self._enc.encode_ordinary_batch(list(text), num_threads=num_threads)
            return [head + row + tail for row in rows] if head or tail else rows
        raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")

    def decode(self, ids: Sequence[int]) -> str:
        """Join the tokens' bytes and decode them as UTF-8, invalid sequences -> U+FFFD."""
        if hasattr(ids, "tolist"):  # numpy arrays and torch tensors, without importing torch
            ids = ids.tolist()
        try:
            data = self._enc.decode_bytes(ids)
        except (KeyError, OverflowError):
            for i in ids:  # find the culprit for the message
                self._check_id(i)
            raise
        return data.decode("utf-8", errors="replace")

    # ---- chat

    def render_conversation(self, conversation: dict,
                            max_tokens: int | None = 2048) -> tuple[list[int], list[int]]:
        """Token ids and loss mask (1 = train on it) of a conversation, both cut to max_tokens.

        conversation = {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}: an optional
        system message first (its text is prepended to the first user message), then user and assistant
        strictly alternating, starting with user. User content is a str; assistant content is a str or a
        list of parts {"type": "text"|"python"|"python_output", "text": str}.
        """
        ids, mask = self._render(check_conversation(conversation))
        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask

    def parse_assistant(self, ids: Sequence[int]) -> list[dict]:
        """The inverse of rendering an assistant message: generated ids -> content parts.

        Text, <|python_start|>code<|python_end|> and <|output_start|>out<|output_end|> become
        {"type": "text" | "python" | "python_output", "text": ...} parts; reading stops at
        <|assistant_end|> or <|bos|>; other special tokens are dropped.
        """
        sp = self._special
        kinds = {sp["<|python_start|>"]: "python", sp["<|output_start|>"]: "python_output",
                 sp["<|python_end|>"]: "text", sp["<|output_end|>"]: "text"}
        stops = {sp["<|assistant_end|>"], sp["<|bos|>"]}
        parts: list[dict] = []
        kind, buf = "text", []

        def flush() -> None:
            if buf:
                parts.append({"type": kind, "text": self.decode(buf)})
                buf.clear()

        for t in ids:
            t = int(t)
            if t in stops:
                break
            if t in kinds:
                flush()
                kind = kinds[t]
            elif t < self.n_vocab - len(sp):  # any other special token is dropped
                buf.append(t)
        flush()
        return parts

    def render_for_completion(self, conversation: dict) -> list[int]:
        """Prompt ids for generating the assistant's next reply: the conversation without its last
        assistant message (if it ends with one, e.g. a task's reference answer), then <|assistant_start|>."""
        messages = check_conversation(conversation)
        if messages[-1][0] == "assistant":
            messages = messages[:-1]
        ids, _ = self._render(messages)
        return ids + [self.encode_special("<|assistant_start|>")]

    def _render(self, messages: list[tuple[str, str | list[dict]]]) -> tuple[list[int], list[int]]:
        special = self.encode_special
        ids: list[int] = []
        mask: list[int] = []

        def add(tokens: list[int], trained: int) -> None:
            ids.extend(tokens)
            mask.extend([trained] * len(tokens))

        add([self.bos_token_id], 0)
        for role, content in messages:
            if role == "user":
                add([special("<|user_start|>"), *self.encode(content), special("<|user_end|>")], 0)
                continue
            add([special("<|assistant_start|>")], 0)
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                text_ids = self.encode(part["text"])
                if part["type"] == "text":
                    add(text_ids, 1)
                elif part["type"] == "python":
                    add([special("<|python_start|>"), *text_ids, special("<|python_end|>")], 1)
                else:  # python_output: written by the tool, so never a training target
                    add([special("<|output_start|>"), *text_ids, special("<|output_end|>")], 0)
            add([special("<|assistant_end|>")], 1)
        return ids, mask


def _check_ranks(ranks: object) -> None:
    if not isinstance(ranks, dict):
        raise ValueError(f"mergeable ranks must be a dict of bytes -> int, got {type(ranks).__name__}")
    for token, rank in ranks.items():
        if not isinstance(token, bytes) or not token or type(rank) is not int:
            raise ValueError(f"mergeable ranks must map non-empty bytes to int, found {token!r}: {rank!r}")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"mergeable ranks must be 0..{len(ranks) - 1}, each used once")
    # byte-level BPE can encode any text only if every single byte is a token
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        shown = ", ".join(f"0x{b:02x}" for b in missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise ValueError(f"{len(missing)} of the 256 single-byte tokens are missing: {shown}")


def _check_pattern(pattern: object) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"the split pattern must be a non-empty str, got {pattern!r}")
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"the split pattern does not compile: {e}") from None


# Texts on which a faulty split pattern shows itself when a tokenizer is built, not mid-run: long runs of
# each kind of character (where nested quantifiers backtrack without bound) and a mixed sample.
_PROBE_TEXTS = [c * 200 for c in ("a", "Z", "\u00e9", "\ud55c", "1", "\u0663", " ", "\t", "\n", "\r\n", "!", "'",
                                  "\U0001f600", "e\u0301")]
_PROBE_TEXTS += ["Hello world! It's 2024, don't   panic.\n\n\tx = f(1)  # \ud55c\uad6d\uc5b4 \U0001f600\r\n",
                 "a1 !\n" * 50]


def _probe_pattern(pattern: str, enc: tiktoken.Encoding) -> None:
    """ValueError unless the pattern cuts every probe text into non-empty pieces that cover all of it,
    within fancy-regex's backtracking limit. tiktoken runs the same engine and panics mid-encode when a
    pattern hits that limit or matches empty text: its src/lib.rs unwraps every match and its
    byte_pair_encode indexes into every piece."""
    try:  # rustbpe splits with fancy-regex too, and reports its errors instead of panicking
        from nanochat import rustbpe
    except ImportError:
        rustbpe = None
    for text in _PROBE_TEXTS:
        shown = f"{text[:12]!r}..."
        try:
            pieces = rustbpe.split(text, pattern) if rustbpe is not None else None
            covered = "".join(pieces) if pieces is not None else enc.decode(enc.encode_ordinary(text))
        except ValueError as e:
            raise ValueError(f"the split pattern needs unbounded backtracking on a text like {shown} ({e})") from None
        except BaseException as e:  # without rustbpe: tiktoken's PanicException, a BaseException
            if type(e).__name__ != "PanicException":
                raise
            raise ValueError(f"the split pattern makes tiktoken fail on a text like {shown} ({e})") from None
        if pieces is not None and "" in pieces:
            raise ValueError(f"the split pattern matches empty text (in {shown}): every piece needs a character")
        if covered != text:
            raise ValueError(f"the split pattern skips characters of {shown}: encoding would lose them")


def _check_special_names(names: object) -> None:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"special tokens must be a list of str, got {type(names).__name__}")
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"special tokens must be distinct non-empty str, got {list(names)!r}")


def check_conversation(conversation: object) -> list[tuple[str, str | list[dict]]]:
    """Validate a conversation; returns (role, content) pairs with the system message folded into the
    first user message, so that what follows only sees user/assistant alternating."""
    if not isinstance(conversation, dict):
        raise ValueError("a conversation must be a dict with a 'messages' list, "
                         f"got {type(conversation).__name__}")
    messages = conversation.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("the conversation has no messages: expected a non-empty list under 'messages'")
    out: list[tuple[str, str | list[dict]]] = []
    system = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {msg!r:.80}")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise ValueError(f"message {i} has unknown role {role!r}; roles are {', '.join(ROLES)}")
        if role == "system":
            if i != 0:
                raise ValueError(f"message {i} is a system message, which is allowed only as message 0")
            system = _check_text(content, f"message {i} (system)")
            continue
        expected = "user" if len(out) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"message {i} has role {role!r} where {expected!r} was expected: after an "
                             "optional system message, roles alternate user, assistant, user, ...")
        if role == "user":
            content = _check_text(content, f"message {i} (user)")
            # the layout has no system turn: the model reads the system text as part of the first request
            if system is not None:
                content, system = system + "\n\n" + content, None
        elif isinstance(content, list):
            _check_parts(content, i)
        else:
            content = _check_text(content, f"message {i} (assistant)", "a str or a list of parts")
        out.append((role, content))
    if not out:
        raise ValueError("the conversation has a system message but no user message")
    return out


def _check_text(content: object, where: str, kind: str = "a str") -> str:
    if not isinstance(content, str):
        raise ValueError(f"{where} content must be {kind}, got {type(content).__name__}")
    if not content:
        raise ValueError(f"{where} has empty content")
    return content


def _check_parts(parts: list, i: int) -> None:
    if not parts:
        raise ValueError(f"message {i} (assistant) has empty content: an empty list of parts")
    for j, part in enumerate(parts):
        where = f"message {i} part {j}"
        if not isinstance(part, dict) or "type" not in part or "text" not in part:
            raise ValueError(f"{where} must be a dict with 'type' and 'text', got {part!r:.80}")
        if part["type"] not in PART_TYPES:
            raise ValueError(f"{where} has unknown type {part['type']!r}; types are {', '.join(PART_TYPES)}")
        if not isinstance(part["text"], str):
            got = type(part["text"]).__name__
            raise ValueError(f"{where} ({part['type']}) text must be a str, got {got}")
        # a tool may legitimately print nothing, but empty text or code would teach empty turns
        if not part["text"] and part["type"] != "python_output":
            raise ValueError(f"{where} ({part['type']}) has empty text")
