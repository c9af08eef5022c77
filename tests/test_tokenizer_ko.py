"""The Korean tokenizer: its split pattern, the mixed-corpus trainer's share, tok_eval's side-by-side
table, and the held-out konlpy document that embedded-ko never trains on."""

import importlib.util
import json

import pytest
import regex

from nanochat import rustbpe
from nanochat.tokenizer import KOREAN_SPLIT_PATTERN, PATTERNS, SPLIT_PATTERN, Tokenizer
from scripts.tok_eval import side_by_side
from scripts.tok_train import Counts, Options, training_texts

SPLITS = [
    # an eojeol (word + particles) is one piece with its leading space, under both patterns
    ("우리는 학교에서 회의를 했다.", ["우리는", " 학교에서", " 회의를", " 했다", "."]),
    ("아이가 사과를 3456개 먹었어요!", ["아이가", " 사과를", " ", "34", "56", "개", " 먹었어요", "!"]),
    # a script change cuts: Latin word and Korean particle become separate pieces
    ("이 코드는 Python으로 작성했고 GitHub에 있습니다.",
     ["이", " 코드는", " Python", "으로", " 작성했고", " GitHub", "에", " 있습니다", "."]),
    # one punctuation mark before a word joins it, as in GPT-4's pattern
    ("(주)한국전자의 API를 호출한다", ["(주", ")한국전자의", " API", "를", " 호출한다"]),
    ("\"네, 알겠습니다.\"\n감사해요", ["\"네", ",", " 알겠습니다", ".\"\n", "감사해요"]),
]


@pytest.mark.parametrize("text,pieces", SPLITS)
def test_korean_pattern_keeps_hangul_runs_together(text, pieces):
    assert rustbpe.split(text, KOREAN_SPLIT_PATTERN) == pieces
    assert regex.findall(KOREAN_SPLIT_PATTERN, text) == pieces  # the encoder's engine agrees
    # never a cut inside a Hangul run: the pieces hold the text's Hangul runs whole, one each
    runs = [run for piece in pieces for run in regex.findall(r"\p{Hangul}+", piece)]
    assert runs == regex.findall(r"\p{Hangul}+", text)


def test_korean_pattern_differs_from_default_only_at_script_changes():
    assert regex.findall(SPLIT_PATTERN, "코드는 Python으로") == ["코드는", " Python으로"]
    assert regex.findall(KOREAN_SPLIT_PATTERN, "코드는 Python으로") == ["코드는", " Python", "으로"]
    english = "It's 2024, and the fox's den isn't   empty.\n\n  x = f(y) + 12345"
    assert regex.findall(KOREAN_SPLIT_PATTERN, english) == regex.findall(SPLIT_PATTERN, english)
    assert PATTERNS == {"default": SPLIT_PATTERN, "korean": KOREAN_SPLIT_PATTERN}


def test_trained_korean_tokenizer_round_trips_and_saves_its_pattern(tmp_path):
    texts = ["우리는 학교에서 회의를 했다. 학교에서 점심을 먹었다. " * 20, "Python으로 코드를 쓴다. " * 20]
    tok = Tokenizer.train_from_iterator(texts, 300, pattern=KOREAN_SPLIT_PATTERN, num_threads=1)
    assert tok.n_vocab == 300
    sample = "오늘은 학교에서 Python으로 회의를 했다."
    assert tok.decode(tok.encode(sample)) == sample
    # merges never cross a script change: no token holds both Hangul and a Latin letter
    for i in range(tok.n_vocab - 9):
        text = tok.decode([i])
        assert not (regex.search(r"\p{Hangul}", text) and regex.search(r"[A-Za-z]", text))
    loaded = Tokenizer.load(tok.save(tmp_path).rsplit("/", 1)[0])
    assert loaded.pattern == KOREAN_SPLIT_PATTERN
    assert json.loads((tmp_path / "tokenizer.json").read_text())["pattern"] == KOREAN_SPLIT_PATTERN
    assert loaded.encode(sample) == tok.encode(sample)


def _folder(path, docs):
    path.mkdir()
    for i, doc in enumerate(docs):
        (path / f"d{i:02d}.txt").write_text(doc, encoding="utf-8")
    return str(path)


def _read(opts):
    counts = Counts()
    docs = list(training_texts(opts, counts))
    return docs, counts


def test_mix_when_the_main_corpus_runs_out_keeps_the_share_exactly(tmp_path):
    ko = _folder(tmp_path / "ko", ["가" * 1000, "나" * 700, "다" * 300])  # 2,000 characters in all
    en = _folder(tmp_path / "en", ["e" * 900] * 5)
    docs, counts = _read(Options(corpus=ko, mix_corpus=en, mix_share=0.2, max_chars=10**6))
    # 2,000 Korean characters are 80%: English gets exactly 500, the last document cut
    assert counts.by_corpus == {ko: 2000, en: 500}
    assert [len(d) for d in docs] == [1000, 700, 300, 500]
    assert counts.chars == 2500 and counts.docs == 4


def test_mix_within_max_chars_splits_the_budget(tmp_path):
    ko = _folder(tmp_path / "ko", ["가" * 1000] * 4)
    en = _folder(tmp_path / "en", ["e" * 300] * 10)
    docs, counts = _read(Options(corpus=ko, mix_corpus=en, mix_share=0.25, max_chars=2000))
    assert counts.by_corpus == {ko: 1500, en: 500}
    assert [len(d) for d in docs] == [1000, 500, 300, 200]
    # doc_cap applies to both corpora before the budget
    _, capped = _read(Options(corpus=ko, mix_corpus=en, mix_share=0.5, max_chars=10**6, doc_cap=100))
    assert capped.by_corpus == {ko: 400, en: 400}


def test_mix_corpus_too_small_warns_with_the_real_share(tmp_path, capsys):
    ko = _folder(tmp_path / "ko", ["가" * 1000])
    en = _folder(tmp_path / "en", ["e" * 100])
    _, counts = _read(Options(corpus=ko, mix_corpus=en, mix_share=0.5))
    assert counts.by_corpus == {ko: 1000, en: 100}
    assert "gave 100 characters of the 1,000 wanted; its share is 0.091, not 0.5" in capsys.readouterr().out


def test_without_mix_the_corpus_alone(tmp_path):
    ko = _folder(tmp_path / "ko", ["가" * 1000, "나" * 1000])
    _, counts = _read(Options(corpus=ko, max_chars=1500))
    assert counts.by_corpus == {ko: 1500}


@pytest.mark.parametrize("kwargs,message", [
    ({"mix_share": 0.0}, "--mix_share must be between 0 and 1"),
    ({"mix_share": 1.0}, "--mix_share must be between 0 and 1"),
    ({"corpus": "embedded", "mix_corpus": "embedded"}, "same corpus"),
])
def test_bad_mix_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Options(**kwargs)


def test_side_by_side_prints_english_and_korean(capsys):
    rows = [{"sample": "english", "bytes": 300, "ours": 100, "baseline": 75},
            {"sample": "english-docs", "bytes": 700, "ours": 300, "baseline": 250},
            {"sample": "korean", "bytes": 600, "ours": 200, "baseline": 600},
            {"sample": "korean-heldout", "bytes": 400, "ours": 100, "baseline": 400},
            {"sample": "code", "bytes": 999, "ours": 1, "baseline": 1}]
    table = side_by_side(rows, ["ours", "baseline"])
    assert table == {"ours": {"English": 2.5, "Korean": 3.333}, "baseline": {"English": 3.077, "Korean": 1.0}}
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["English", "Korean"]
    assert out[2].split() == ["ours", "2.50", "3.33"] and out[3].split() == ["baseline", "3.08", "1.00"]


@pytest.mark.skipif(importlib.util.find_spec("konlpy") is None, reason="needs the konlpy wheel (.[ko])")
def test_embedded_ko_trains_without_the_held_out_document():
    from nanochat.embedded_corpus import korean_documents
    from nanochat.local_corpus import _hash_split
    from nanochat.text_sources import iter_texts
    from scripts.tok_eval import local_samples

    docs = korean_documents()
    train, held = _hash_split(docs)
    assert len(held) == 1 and len(train) == len(docs) - 1
    assert list(iter_texts("embedded-ko")) == train
    assert local_samples(10**6)["korean-heldout"] == held[0]
