"""``bertsilicon encode`` as a job: shards + manifest, a run killed at a random point and resumed equals an
uninterrupted run bit for bit, every row exactly once, and bad input / outputs are errors before any work."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bertsilicon import data
from bertsilicon.cli import main as cli
from bertsilicon.encode import read_output
from bertsilicon.encode.embedder import resolve
from bertsilicon.encode.job import Job, run
from bertsilicon.encode.shards import MANIFEST, OutputError, ShardStore

pytest.importorskip("pyarrow")
ROOT = Path(__file__).resolve().parents[2]
N_TEXTS = 90


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    texts = data.corpus("docstrings").subset(N_TEXTS, seed=4).texts
    path = d / "in.jsonl"
    path.write_text("".join(json.dumps({"key": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path, texts


def _args(corpus_path, out, *extra):
    return ["encode", str(corpus_path), "--id-field", "key", "--out", str(out), "--shard-rows", "8",
            "--precision", "int8", "--max-batch-tokens", "1024", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "emb.parquet"
    assert cli(_args(corpus[0], out, "--no-progress")) == 0
    return out


def test_output_is_shards_plus_manifest_in_input_order(corpus, uninterrupted):
    ids, vectors = read_output(uninterrupted)
    assert ids == [f"doc-{i}" for i in range(N_TEXTS)]
    assert vectors.shape == (N_TEXTS, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)  # all-MiniLM-L6-v2 normalizes
    manifest = json.loads((uninterrupted / MANIFEST).read_text())
    assert manifest["complete"] and len(manifest["shards"]) == -(-N_TEXTS // 8)
    assert manifest["summary"]["texts"] == N_TEXTS
    assert sorted(p.name for p in uninterrupted.glob("part-*.parquet"))[0] == "part-00000.parquet"
    assert not list(uninterrupted.glob(".*.tmp"))


def test_npy_output_and_the_api_agree(corpus, uninterrupted, tmp_path):
    import bertsilicon

    out = tmp_path / "emb.npy"
    assert cli(_args(corpus[0], out, "--no-progress", "--max-batch-tokens", "300")) == 0
    ids, vectors = read_output(out)
    assert ids == read_output(uninterrupted)[0]
    assert np.array_equal(vectors, read_output(uninterrupted)[1])  # the budget changes no bit
    assert np.array_equal(vectors[:7], bertsilicon.encode(corpus[1][:7], precision="int8", threads=1))


def test_killed_run_resumes_to_the_uninterrupted_output(corpus, uninterrupted, tmp_path):
    """SIGKILL at a random point after the first shard, then the same command: bit for bit the same output."""
    out = tmp_path / "emb.parquet"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "bertsilicon.cli", *_args(corpus[0], out, "--no-progress")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = -(-N_TEXTS // 8)
    target = random.Random().randint(1, shards // 2)  # a random shard boundary in the first half of the job
    deadline = time.monotonic() + 240
    def recorded() -> int:  # shards the manifest (written atomically, after each shard) lists as done
        try:
            return len(json.loads((out / MANIFEST).read_text())["shards"])
        except (OSError, ValueError):
            return 0

    while recorded() < target and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)  # at once: the second half of the job is far longer than one poll
    proc.wait()
    manifest = json.loads((out / MANIFEST).read_text())
    done = len(manifest["shards"])
    assert not manifest["complete"] and 1 <= done < -(-N_TEXTS // 8), "the kill should land mid-job"
    result = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, timeout=300)  # progress on
    assert result.returncode == 0, result.stderr
    assert f"resumed after {done * 8}" in result.stderr and f"encoded {N_TEXTS} texts" in result.stderr
    ids, vectors = read_output(out)
    want_ids, want = read_output(uninterrupted)
    assert ids == want_ids and len(set(ids)) == N_TEXTS  # every row exactly once
    assert np.array_equal(vectors, want)


def test_outputs_that_are_not_this_unfinished_job_are_errors(corpus, uninterrupted, tmp_path, capsys):
    assert cli(_args(corpus[0], uninterrupted, "--no-progress")) == 2
    assert "already holds the finished run of this job" in capsys.readouterr().err
    other = tmp_path / "other.parquet"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli(_args(corpus[0], other)) == 2
    assert "is not an encode output" in capsys.readouterr().err
    assert cli(_args(corpus[0], tmp_path / "emb.csv")) == 2
    assert "expected a path ending in .parquet or .npy" in capsys.readouterr().err
    job = Job(corpus[0], tmp_path / "x.parquet", resolve(precision="int8"), id_field="key", shard_rows=8)
    store = ShardStore.open(job.output, job.identity(), N_TEXTS, 8)
    assert store.pending() == list(range(12))
    with pytest.raises(OutputError, match=r"holds another job \(differs in: encoder\)"):
        run(Job(corpus[0], job.output, resolve(precision="fp32"), id_field="key", shard_rows=8), progress=False)


def test_bad_input_is_an_error_before_any_work_or_a_reported_skip(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": "a real sentence"}) + "\n{broken\n" + json.dumps({"body": "x"}) + "\n")
    out = tmp_path / "emb.parquet"
    assert cli(["encode", str(path), "--out", str(out), "--precision", "fp32"]) == 2
    assert "in.jsonl, row 1: not valid JSON" in capsys.readouterr().err
    assert not out.exists()  # nothing was started
    assert cli(["encode", str(path), "--out", str(out), "--field", "body", "--precision", "fp32"]) == 2
    assert "row 0: field 'body' is missing" in capsys.readouterr().err
    assert cli(["encode", str(path), "--out", str(out), "--precision", "fp32", "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert "skipped row 1: not valid JSON" in err and "skipped row 2: field 'text' is missing" in err
    assert "encoded 1 texts (" in err and "2 skipped" in err and str(out) in err
    ids, vectors = read_output(out)
    assert ids == [0] and vectors.shape == (1, 384)
    assert json.loads((out / MANIFEST).read_text())["summary"]["skipped_rows"][0][0] == 1
