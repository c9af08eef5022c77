"""Training text from parquet shards, text files, JSON lines and the embedded corpus, with caps and clear
errors; a JSON-lines corpus turned into shards by nanochat.dataset and found again by training."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.dataset import DataNotFound, download, list_shards, read_manifest
from nanochat.text_sources import SourceError, iter_texts


def write_parquet(path, texts, row_group_size=2):
    pq.write_table(pa.table({"text": texts}), path, row_group_size=row_group_size)


def test_shard_folder_yields_training_shards_in_order_never_validation(tmp_path):
    write_parquet(tmp_path / "shard_00001.parquet", ["c", "  \n", "d"])
    write_parquet(tmp_path / "shard_00000.parquet", ["a", "b", ""])
    write_parquet(tmp_path / "shard_00002.parquet", ["validation text"])  # last in order: validation
    assert list(iter_texts(str(tmp_path))) == ["a", "b", "c", "d"]
    # a single file is read whole, whatever its name
    assert list(iter_texts(str(tmp_path / "shard_00002.parquet"))) == ["validation text"]


def test_text_files_doc_cap_and_max_chars(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.txt").write_text("second document")
    assert list(iter_texts(str(tmp_path), doc_cap=5)) == ["hello", "secon"]
    # max_chars cuts the last document so the total is exact
    assert list(iter_texts(str(tmp_path), max_chars=14)) == ["hello world", "sec"]
    assert "".join(iter_texts(str(tmp_path), max_chars=11)) == "hello world"


def test_errors_are_one_clear_line(tmp_path):
    with pytest.raises(DataNotFound, match="no training shards in .*fineweb-typo: run python -m nanochat.dataset"):
        list(iter_texts("fineweb-typo"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFound, match="no training shards in"):
        list(iter_texts(str(tmp_path / "empty")))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(SourceError, match="not a readable parquet file") as err:
        list(iter_texts(str(bad)))
    assert "delete" not in str(err.value)  # the user's own file: never advise deleting it
    nocol = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"body": ["x"]}), nocol)
    with pytest.raises(SourceError, match="has no 'text' column"):
        list(iter_texts(str(nocol)))


def test_embedded_source_yields_english_documents():
    docs = []
    for doc in iter_texts("embedded", max_chars=200_000):
        docs.append(doc)
    assert sum(map(len, docs)) == 200_000
    assert len(docs) > 10
    assert sum(" the " in d for d in docs) > len(docs) // 2


def write_jsonl(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows), encoding="utf-8")


MIXED = [{"text": "first doc", "id": 1}, "{not json\n", {"text": "second doc"}, "\n", {"body": "no text field"},
         "[1, 2]\n", {"text": 7}, {"text": "third doc", "meta": {"k": 1}}]


def test_jsonl_file_yields_text_field_and_counts_what_it_skips(tmp_path, capsys):
    path = tmp_path / "mixed_pretraining.jsonl"
    write_jsonl(path, MIXED)
    assert list(iter_texts(str(path))) == ["first doc", "second doc", "third doc"]
    out = capsys.readouterr().out.strip().splitlines()
    # "{not json" and "[1, 2]" are malformed; {"body"} and {"text": 7} lack a string text field
    assert out == [f"warning: {path}: skipped 2 malformed line(s) and 2 without a string 'text' field; "
                   "read 3 document(s)"]
    assert list(iter_texts(str(path), max_chars=12)) == ["first doc", "sec"]


def test_jsonl_field_from_argument_or_environment(tmp_path, monkeypatch, capsys):
    path = tmp_path / "c.jsonl"
    write_jsonl(path, [{"content": "alpha", "text": "not this"}, {"content": "beta"}])
    assert list(iter_texts(str(path), text_field="content")) == ["alpha", "beta"]
    monkeypatch.setenv("NANOCHAT_TEXT_FIELD", "content")
    assert list(iter_texts(str(path))) == ["alpha", "beta"]
    assert capsys.readouterr().out == ""  # nothing skipped, nothing said


def test_jsonl_without_the_field_fails_naming_the_keys(tmp_path):
    path = tmp_path / "chats.jsonl"
    write_jsonl(path, [{"messages": [], "id": 1}, {"messages": [], "source": "x"}, "oops\n"])
    with pytest.raises(SourceError) as err:
        list(iter_texts(str(path)))
    msg = str(err.value)
    assert "\n" not in msg and "no line has a string field 'text'" in msg
    assert "keys seen: id, messages, source" in msg and "NANOCHAT_TEXT_FIELD" in msg
    assert "2 JSON object(s), 1 malformed line(s)" in msg


def test_folder_of_jsonl_files_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "b.jsonl", [{"text": "b1"}, {"text": "b2"}])
    write_jsonl(tmp_path / "sub" / "a.jsonl", [{"text": "a1"}])
    write_jsonl(tmp_path / "a.jsonl", [{"text": "a0"}])
    assert list(iter_texts(str(tmp_path))) == ["a0", "b1", "b2", "a1"]


def test_shard_folder_with_a_stray_jsonl_stays_a_shard_folder(tmp_path):
    write_parquet(tmp_path / "shard_00000.parquet", ["train text"])
    write_parquet(tmp_path / "shard_00001.parquet", ["validation text"])
    write_jsonl(tmp_path / "notes.jsonl", [{"text": "not a document"}])
    assert list(iter_texts(str(tmp_path))) == ["train text"]


def test_dataset_builds_shards_from_jsonl_and_training_finds_them(base_dir, tmp_path):
    path = tmp_path / "mixed_pretraining.jsonl"
    docs = [f"document number {i} " + "x" * (i % 7) for i in range(40)]
    write_jsonl(path, [{"text": d} for d in docs] + ["garbage\n"])
    # before the build, training says what to run (no -n: the whole file becomes shards)
    with pytest.raises(DataNotFound, match=f"python -m nanochat.dataset --corpus={path} --name=mixed_pretraining$"):
        list_shards("train", str(path))
    paths = download(str(path), shard_chars=200)
    out = base_dir / "base_data_mixed_pretraining"
    assert [p.parent for p in paths] == [out] * len(paths)
    train, val = list_shards("train", str(path)), list_shards("val", str(path))
    assert train == paths[:-1] and val == [paths[-1]]
    train_docs = [t for p in train for t in pq.read_table(p).column("text").to_pylist()]
    val_docs = pq.read_table(val[0]).column("text").to_pylist()
    # a tenth of the 40 documents validates, none of them is trained on, and nothing is lost
    assert len(val_docs) == 4 and len(train_docs) == 36
    assert sorted(train_docs + val_docs) == sorted(docs) and not set(val_docs) & set(train_docs)
    manifest = read_manifest(out)
    assert manifest["provenance"]["text_field"] == "text" and manifest["origin"] == str(path)
    # the same name training passes (the base_data_<name> suffix) reads the same shards
    assert list_shards("train", "mixed_pretraining") == train


def test_text_field_flag_reaches_tok_train_and_the_dataset(tmp_path, base_dir):
    """--text_field picks the JSON field in tok_train and nanochat.dataset (the environment variable's job too)."""
    import json as _json

    from nanochat.dataset import Options as DatasetOptions
    from nanochat.dataset import main as dataset_main
    from scripts import tok_train

    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(_json.dumps({"body": f"document {i} " * 30, "text": "x"}) for i in range(40)) + "\n")
    tok_train.main(tok_train.Options(vocab_size=300, corpus=str(path), text_field="body", num_threads=1))
    meta = _json.loads((base_dir / "report" / "01-tokenizer-training.json").read_text())["data"]
    assert meta["characters"] == sum(len(f"document {i} " * 30) for i in range(40))
    shards = dataset_main(DatasetOptions(corpus=str(path), text_field="body"))
    manifest = _json.loads((shards[0].parent / "manifest.json").read_text())
    assert manifest["provenance"]["text_field"] == "body"
    assert sum(s["documents"] for s in manifest["shards"].values()) == 40
