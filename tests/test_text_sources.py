"""Training text from parquet shards, text files and the embedded corpus, with caps and clear errors."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat.dataset import DataNotFound
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
    with pytest.raises(SourceError, match="not a readable parquet file"):
        list(iter_texts(str(bad)))
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
