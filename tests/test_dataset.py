"""Tests for nanochat.dataset against a real HTTP server on 127.0.0.1 serving generated shards.

The server plays Hugging Face: `/datasets/<repo>/resolve/main/<file>` serves files and
`/api/datasets/<repo>/tree/main` serves the checksum listing two entries per page, linked by a
`Link: <...>; rel="next"` header. Tests point the real registry entries at it with an endpoint.
"""

import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat import dataset as ds
from nanochat import embedded_corpus, local_corpus
from nanochat.dataset import DataNotFound, DatasetError, download, list_shards, shard_name
from nanochat.download import DownloadError
from tests.conftest import REPO_ROOT, subprocess_env
from tests.http_server import start_server, stop_server

EN_REPO = "karpathy/fineweb-edu-100b-shuffle"
KO_REPO = "minpeter/fineweb-2-edu-korean-raw"
PAGE = 2  # listing entries per page, so even three files paginate


class Server:
    """Serves `files` (path -> bytes); `listings` (repo -> entries) as paginated tree API pages."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.listings: dict[str, list[dict]] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                path, _, query = self.path.partition("?")
                prefix, suffix = "/api/datasets/", "/tree/main"
                if path.startswith(prefix) and path.endswith(suffix):
                    repo = path[len(prefix):-len(suffix)]
                    if repo not in server.listings:
                        return self.reply(404, b"<html>not found</html>", "text/html")
                    start = int(query.removeprefix("cursor=") or 0)
                    entries = server.listings[repo]
                    headers = {}
                    if start + PAGE < len(entries):
                        headers["Link"] = f'<{server.base}{path}?cursor={start + PAGE}>; rel="next"'
                    body = json.dumps(entries[start:start + PAGE]).encode()
                    return self.reply(200, body, "application/json", headers)
                if path not in server.files:
                    return self.reply(404, b"<html>not found</html>", "text/html")
                self.reply(200, server.files[path], "application/octet-stream")

            def reply(self, code, body, ctype, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd, self.base = start_server(Handler)

    def host(self, repo: str, files: dict[str, bytes], listed: bool = True, wrong_sha: tuple[str, ...] = ()):
        """Put files under the repo's resolve URL and, if listed, in its tree listing."""
        for name, data in files.items():
            self.files[f"/datasets/{repo}/resolve/main/{name}"] = data
        if listed:
            self.listings[repo] = [{"type": "directory", "path": "sub"}, {"type": "file", "path": ".gitattributes",
                                                                            "size": 10, "oid": "abc"}] + [
                {"type": "file", "path": name, "size": len(data), "oid": "0" * 40,
                 "lfs": {"oid": "f" * 64 if name in wrong_sha else hashlib.sha256(data).hexdigest(),
                         "size": len(data), "pointerSize": 130}}
                for name, data in files.items()]

    def data_requests(self) -> list[str]:
        return [r for r in self.requests if "/resolve/" in r]

    def close(self):
        stop_server(self.httpd)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(ds, "RETRY_BACKOFF", 0.01)


def docs_of(seed: int, n: int = 50) -> list[str]:
    return [f"document {seed}-{i}: " + " ".join(f"w{(i * 31 + j * seed) % 101}" for j in range(20)) for i in range(n)]


def parquet_bytes(texts: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf, row_group_size=1024, compression="zstd")
    return buf.getvalue()


def arrow_bytes(texts: list, stream: bool, batch: int = 700) -> bytes:
    table = pa.table({"text": pa.array(texts, pa.large_string()), "id": list(range(len(texts)))})
    sink = io.BytesIO()
    opener = pa.ipc.new_stream if stream else pa.ipc.new_file
    with opener(sink, table.schema) as writer:
        for b in table.to_batches(max_chunksize=batch):
            writer.write_batch(b)
    return sink.getvalue()


def texts(path: Path) -> list[str]:
    return pq.read_table(path).column("text").to_pylist()


def english(total: int = 5) -> tuple[ds.DataSource, dict[str, bytes]]:
    src = dataclasses.replace(ds.SOURCES["fineweb-edu"], num_total_shards=total)
    return src, {f"shard_{i:05d}.parquet": parquet_bytes(docs_of(i)) for i in range(total)}


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- English, checksums


def test_two_shards_plus_val_verified_then_rerun_is_free(base_dir, server):
    src, files = english(5)
    server.host(EN_REPO, files)
    paths = download(src, 2, endpoint=server.base, workers=2)
    data = base_dir / "base_data"
    assert paths == [data / "shard_00000.parquet", data / "shard_00001.parquet", data / "shard_00004.parquet"]
    for p in paths:
        assert p.read_bytes() == files[p.name]
    assert sorted(p.name for p in data.glob("*.parquet")) == [p.name for p in paths]
    assert not list(data.glob("*.part")) and not list(data.glob("*.tmp"))
    api = [r for r in server.requests if r.startswith("/api/")]
    assert len(api) == 4  # 7 entries, 2 per page: the Link header was followed to the end
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["source"] == "fineweb-edu" and manifest["num_total_shards"] == 5
    assert manifest["val_shard"] == "shard_00004.parquet"
    assert manifest["shards"]["shard_00001.parquet"]["sha256"] == hashlib.sha256(files["shard_00001.parquet"]).hexdigest()
    assert "Hugging Face" in manifest["checksums"]
    cached = json.loads((data / "checksums.json").read_text())
    assert cached["files"]["shard_00003.parquet"]["size"] == len(files["shard_00003.parquet"])

    n = len(server.requests)
    download(src, 2, endpoint=server.base)
    assert len(server.requests) == n  # neither data nor listing: complete shards are skipped

    download(src, 3, endpoint=server.base)  # one more shard: the listing comes from the cache
    assert server.requests[n:] == [f"/datasets/{EN_REPO}/resolve/main/shard_00002.parquet"]
    assert [p.name for p in list_shards("train")] == ["shard_00000.parquet", "shard_00001.parquet",
                                                      "shard_00002.parquet"]
    assert list_shards("val") == [data / "shard_00004.parquet"]


def test_wrong_sha256_in_listing_is_caught_with_one_line(base_dir, server):
    src, files = english(4)
    server.host(EN_REPO, files, wrong_sha=("shard_00001.parquet",))
    with pytest.raises(DownloadError) as e:
        download(src, 2, endpoint=server.base, retries=1)
    msg = str(e.value)
    assert "sha256 mismatch" in msg and "shard_00001.parquet" in msg and "\n" not in msg
    assert not (base_dir / "base_data" / "shard_00001.parquet").exists()
    assert not list((base_dir / "base_data").glob("*.part"))


def test_corrupted_local_shard_is_refetched(base_dir, server):
    src, files = english(3)
    server.host(EN_REPO, files)
    download(src, 1, endpoint=server.base)
    shard = base_dir / "base_data" / "shard_00000.parquet"
    bad = bytearray(shard.read_bytes())
    bad[len(bad) // 2] ^= 0xFF  # same size: only the checksum can tell
    st = shard.stat()
    shard.write_bytes(bytes(bad))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with size and mtime as recorded...
    n = len(server.requests)
    download(src, 1, endpoint=server.base)
    assert server.requests[n:] == []  # ...a plain rerun trusts the record (that is what makes it fast)
    download(src, 1, endpoint=server.base, verify=True)  # --verify re-hashes and refetches
    assert server.data_requests()[-1].endswith("shard_00000.parquet")
    assert shard.read_bytes() == files["shard_00000.parquet"]
    shard.write_bytes(bytes(bad))  # a changed mtime alone triggers the re-check
    download(src, 1, endpoint=server.base)
    assert shard.read_bytes() == files["shard_00000.parquet"]


def test_lfs_pointer_caught_by_size_and_by_footer(base_dir, server, capsys):
    src, files = english(3)
    real = files["shard_00000.parquet"]
    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(real).hexdigest()}\n"
               f"size {len(real)}\n").encode()
    assert 120 < len(pointer) < 140
    server.host(EN_REPO, files)
    server.files[f"/datasets/{EN_REPO}/resolve/main/shard_00000.parquet"] = pointer
    with pytest.raises(DownloadError) as e:
        download(src, 1, endpoint=server.base, retries=0)
    assert f"server reports {len(pointer)} bytes, expected {len(real)}" in str(e.value)

    del server.listings[EN_REPO]  # no listing: the footer check still refuses the pointer
    (base_dir / "base_data" / "checksums.json").unlink()
    with pytest.raises(DownloadError) as e:
        download(src, 1, endpoint=server.base, retries=0)
    assert "Git LFS pointer" in str(e.value) and "\n" not in str(e.value)
    assert capsys.readouterr().out.count("cannot fetch the checksum listing") == 1
    assert not (base_dir / "base_data" / "shard_00000.parquet").exists()


# ----------------------------------------------------------------------------- Korean Arrow


def test_korean_arrow_stream_and_file_formats_convert_to_same_parquet(base_dir, server):
    src = dataclasses.replace(ds.SOURCES["ko"], num_total_shards=3)
    korean = [f"한국어 문서 {i}: 대한민국 헌법 제{i}조 국민은 법 앞에 평등하다." for i in range(2500)]
    noisy = [None if i % 97 == 0 else "  \n" if i % 89 == 0 else "" if i % 83 == 0 else t for i, t in enumerate(korean)]
    kept = [t for t in noisy if t and t.strip()]
    files = {"data-00000-of-00502.arrow": arrow_bytes(noisy, stream=True),
             "data-00001-of-00502.arrow": arrow_bytes(noisy, stream=False),
             "data-00002-of-00502.arrow": arrow_bytes(korean[:30], stream=True)}
    server.host(KO_REPO, files)
    paths = download(src, 2, endpoint=server.base)
    data = base_dir / "base_data_ko"
    assert [p.name for p in paths] == ["shard_00000.parquet", "shard_00001.parquet", "shard_00002.parquet"]
    assert texts(paths[0]) == texts(paths[1]) == kept
    assert paths[0].read_bytes() == paths[1].read_bytes()  # the input format leaves no trace
    meta = pq.ParquetFile(paths[0]).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [1024, 1024, len(kept) - 2048]
    assert meta.row_group(0).column(0).compression == "ZSTD" and meta.schema.names == ["text"]
    assert not list(data.glob("*.arrow")) and not list(data.glob("*.tmp"))
    entry = json.loads((data / "manifest.json").read_text())["shards"]["shard_00001.parquet"]
    assert entry["source_sha256"] == hashlib.sha256(files["data-00001-of-00502.arrow"]).hexdigest()
    assert entry["sha256"] == hashlib.sha256(paths[1].read_bytes()).hexdigest()

    # resumable: a verified Arrow file left before conversion is converted without a request,
    # and one left beside a complete parquet (crash before cleanup) is just deleted
    n = len(server.requests)
    paths[0].unlink()
    (data / "shard_00000.arrow").write_bytes(files["data-00000-of-00502.arrow"])
    (data / "shard_00001.arrow").write_bytes(files["data-00001-of-00502.arrow"])
    download(src, 2, endpoint=server.base)
    assert server.requests[n:] == []  # the listing is cached and the Arrow file verified in place
    assert texts(paths[0]) == kept and not list(data.glob("*.arrow"))
    assert list_shards("train", "ko") == paths[:2] and list_shards("val", "ko") == paths[2:]


def test_truncated_arrow_is_refused(base_dir, server):
    src = dataclasses.replace(ds.SOURCES["ko"], num_total_shards=2)
    good = arrow_bytes(docs_of(1, 400), stream=True)
    server.host(KO_REPO, {"data-00000-of-00502.arrow": good, "data-00001-of-00502.arrow": good}, listed=False)
    server.files[f"/datasets/{KO_REPO}/resolve/main/data-00001-of-00502.arrow"] = good[: len(good) // 2]
    with pytest.raises(DownloadError) as e:
        download(src, 1, endpoint=server.base, retries=0)
    assert "not a readable Arrow IPC file" in str(e.value)
    assert not (base_dir / "base_data_ko" / "shard_00001.parquet").exists()


# ----------------------------------------------------------------------------- other sources


def test_url_template_source(base_dir, server):
    for i in range(4):
        server.files[f"/x/shard_{i:05d}.parquet"] = parquet_bytes(docs_of(i))
    template = server.base + "/x/shard_{index:05d}.parquet"
    with pytest.raises(DatasetError, match="--num_total_shards"):
        ds.resolve_source(template)
    src = ds.resolve_source(template, num_total_shards=4)
    assert src.name == "x" and src.dirname == "base_data_x"
    paths = download(src, 1)
    assert [p.name for p in paths] == ["shard_00000.parquet", "shard_00003.parquet"]
    manifest = ds.read_manifest(base_dir / "base_data_x")
    assert manifest["origin"] == template and manifest["val_shard"] == "shard_00003.parquet"
    assert manifest["shards"]["shard_00003.parquet"]["sha256"] == hashlib.sha256(paths[1].read_bytes()).hexdigest()
    assert list_shards("train", "x") == paths[:1]
    # the same dir cannot silently take a corpus with another validation shard
    with pytest.raises(DatasetError, match="validation shard would change"):
        download(ds.resolve_source(template, num_total_shards=5), 1)


def test_local_folder_sources_parquet_and_arrow(base_dir, tmp_path):
    folder = tmp_path / "my corpus"
    folder.mkdir()
    for i, name in enumerate(["a.parquet", "b.parquet", "c.parquet"]):
        (folder / name).write_bytes(parquet_bytes(docs_of(i)))
    src = ds.resolve_source(str(folder))
    assert src.name == "my_corpus" and src.num_total_shards == 3
    paths = download(src)
    assert [texts(p) for p in paths] == [docs_of(0), docs_of(1), docs_of(2)]
    assert list_shards("val", "my_corpus") == [base_dir / "base_data_my_corpus" / "shard_00002.parquet"]

    arrows = tmp_path / "arrows"
    arrows.mkdir()
    for i in range(2):
        (arrows / f"part{i}.arrow").write_bytes(arrow_bytes(docs_of(i), stream=bool(i)))
    paths = download(ds.resolve_source(str(arrows), name="ar"))
    assert [texts(p) for p in paths] == [docs_of(0), docs_of(1)]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no .parquet or .arrow files"):
        ds.resolve_source(str(tmp_path / "empty"))


def test_embedded_shards_are_deterministic(base_dir, tmp_path, monkeypatch):
    train = [f"Paragraph {i}. " + "The quick brown fox jumps over the lazy dog. " * (5 + i % 7) for i in range(60)]
    fake = embedded_corpus.Corpus(train=train[:10] + ["", "   \n\t"] + train[10:], val=["Held out text. " * 9],
                                  prose_bytes=1, code_bytes=0, sources=[{"source": "stdlib", "license": "PSF-2.0"}])
    monkeypatch.setattr(embedded_corpus, "build_corpus", lambda **kw: fake)
    first = download("embedded", shard_chars=4000)
    data = base_dir / "base_data_embedded"
    assert first[-1] == data / shard_name(len(first) - 1) and len(first) >= 4
    assert [t for p in first[:-1] for t in texts(p)] == train  # in order, blanks dropped
    assert texts(first[-1]) == fake.val
    manifest = ds.read_manifest(data)
    assert manifest["provenance"]["sources"][0]["source"] == "stdlib"
    assert manifest["val_shard"] == first[-1].name

    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "other"))
    second = download("embedded", shard_chars=4000)
    assert [p.read_bytes() for p in second] == [p.read_bytes() for p in first]  # byte-identical

    # -n 1 and a cap: the validation index follows the capped corpus, not -n
    groups = local_corpus._group_documents(train, 9000, 4000)
    assert 1 < len(groups) < len(first) - 1
    capped = download("embedded", 1, shard_chars=4000, max_chars=9000)
    expected = ["shard_00000.parquet", shard_name(len(groups))]
    assert [p.name for p in capped] == expected
    assert sum(len(t) for t in texts(capped[0])) <= 9000
    # the earlier build's other shards are gone: the dir holds exactly this build
    assert sorted(p.name for p in (tmp_path / "other" / "base_data_embedded").glob("*.parquet")) == expected


def test_embedded_korean(base_dir, monkeypatch):
    if not embedded_corpus.korean_documents():
        pytest.skip("konlpy is not installed")
    paths = download("embedded-ko")
    docs = [t for p in paths for t in texts(p)]
    assert sorted(docs) == sorted(d for d in embedded_corpus.korean_documents())
    assert texts(paths[-1]) and list_shards("val", "embedded-ko") == paths[-1:]
    monkeypatch.setattr(embedded_corpus, "korean_documents", lambda: [])
    with pytest.raises(DatasetError, match="uv pip install konlpy") as e:
        download("embedded-ko")
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- training side


def test_list_shards_missing_data_says_what_to_run(base_dir, tmp_path):
    with pytest.raises(DataNotFound) as e:
        list_shards("train")
    assert isinstance(e.value, FileNotFoundError)
    assert str(e.value) == (f"no training shards in {base_dir / 'base_data'}: run python -m nanochat.dataset -n 8 "
                            "(offline: python -m nanochat.dataset --corpus=embedded)")
    with pytest.raises(DataNotFound, match="--corpus=ko -n 8"):
        list_shards("val", "ko")
    with pytest.raises(DataNotFound, match=r"run python -m nanochat.dataset --corpus=embedded$"):
        list_shards("train", "embedded")
    # a plain folder without manifest: the last file in sorted order is the validation shard
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "b.parquet").write_bytes(parquet_bytes(["x"]))
    with pytest.raises(DataNotFound, match="no training shards"):
        list_shards("train", folder)
    (folder / "a.parquet").write_bytes(parquet_bytes(["y"]))
    assert list_shards("train", folder) == [folder / "a.parquet"]
    assert list_shards("val", folder) == [folder / "b.parquet"]
    with pytest.raises(ValueError):
        list_shards("test")


def test_only_rank_zero_downloads(base_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DatasetError, match="only rank 0"):
        download("embedded")


def test_unknown_source_is_one_line():
    with pytest.raises(DatasetError) as e:
        ds.resolve_source("fineweb-typo")
    assert "unknown source 'fineweb-typo'" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- the CLI


def run_cli(args, base, **env):
    return subprocess.run([sys.executable, "-m", "nanochat.dataset", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, env=subprocess_env(NANOCHAT_BASE_DIR=str(base), **env))


def test_cli_english_and_korean_through_the_real_registry(tmp_path, server):
    files = {f"shard_{i:05d}.parquet": parquet_bytes(docs_of(i)) for i in (0, 1, 1822)}
    server.host(EN_REPO, files)
    r = run_cli(["-n", "2", "--workers=2"], tmp_path, NANOCHAT_HF_ENDPOINT=server.base)
    assert r.returncode == 0, r.stderr
    data = tmp_path / "base_data"
    assert sorted(p.name for p in data.glob("*.parquet")) == sorted(files)
    assert "done: 2 training shard(s) + validation shard_01822.parquet" in r.stdout
    n = len(server.data_requests())
    assert run_cli(["-n", "2"], tmp_path, NANOCHAT_HF_ENDPOINT=server.base).returncode == 0
    assert len(server.data_requests()) == n

    ko = {"data-00000-of-00502.arrow": arrow_bytes(docs_of(5), stream=True),
          "data-00501-of-00502.arrow": arrow_bytes(docs_of(6), stream=False)}
    server.host(KO_REPO, ko)
    env = {"HF_ENDPOINT": server.base, "NANOCHAT_HF_ENDPOINT": ""}  # HF tools' variable works too
    r = run_cli(["--corpus", "ko", "-n", "1"], tmp_path, **env)
    assert r.returncode == 0, r.stderr
    assert texts(tmp_path / "base_data_ko" / "shard_00501.parquet") == docs_of(6)


def test_cli_bad_option_and_bad_source_fail_with_one_line(tmp_path):
    r = run_cli(["--num_shrads=3"], tmp_path)
    assert r.returncode == 2 and len(lines(r.stderr)) == 1
    assert "unknown option --num_shrads" in r.stderr and "--num_shards" in r.stderr
    r = run_cli(["--corpus=nowhere"], tmp_path)
    assert r.returncode == 1 and len(lines(r.stderr)) == 1 and "unknown source 'nowhere'" in r.stderr
    r = run_cli(["--corpus=http://127.0.0.1:9/x/shard_{index:05d}.parquet"], tmp_path)
    assert r.returncode == 1 and len(lines(r.stderr)) == 1 and "--num_total_shards" in r.stderr


def test_second_writer_of_a_data_dir_is_refused(base_dir, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    data = base_dir / "base_data_embedded"
    data.mkdir(parents=True)
    with open(data / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process mid-download would
        monkeypatch.setattr(embedded_corpus, "build_corpus", lambda **kw: pytest.fail("must not build"))
        with pytest.raises(DatasetError, match="another nanochat.dataset process is writing"):
            download("embedded")
