"""The encode job on a local Ray (2 CPUs, Ray Data): the local run's output bit for bit, an actor killed
mid-job restarted with every row still exactly once, and every Ray server listening on loopback only."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertsilicon import data
from bertsilicon.encode import read_output, ray_job
from bertsilicon.encode.embedder import resolve
from bertsilicon.encode.job import Job, run

if importlib.util.find_spec("ray") is None:  # not imported here: ray_job.connect imports it for loopback-only Ray
    pytest.skip("Ray is not installed (pip install 'bertsilicon[ray]')", allow_module_level=True)
pytestmark = pytest.mark.slow
N_TEXTS = 60


@pytest.fixture(scope="module")
def ray_local():
    ray = ray_job.connect(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "in.jsonl"
    texts = data.corpus("pydoc").subset(N_TEXTS, seed=8).texts
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def _job(corpus, out, threads=None):
    return Job(corpus, out, resolve(precision="int8"), shard_rows=6, max_batch_tokens=2048, threads=threads)


class CrashOnce(ray_job.ShardEncoder):
    """An actor whose process dies (os._exit, no cleanup: as a killed one) on its first shard, once per job."""

    marker = None

    def __call__(self, batch):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().__call__(batch)


def test_ray_equals_local_and_survives_a_killed_actor(ray_local, corpus, tmp_path):
    local = tmp_path / "local.parquet"
    run(_job(corpus, local, threads=2), progress=False)  # the actors run on 1 thread each
    assert ray_job.actor_layout(2) == (2, 1)

    on_ray = tmp_path / "ray.parquet"
    summary = ray_job.run(_job(corpus, on_ray), progress=False)
    assert summary.counts.texts == N_TEXTS
    ids, vectors = read_output(on_ray)
    want_ids, want = read_output(local)
    assert ids == want_ids == list(range(N_TEXTS))
    assert np.array_equal(vectors, want)

    CrashOnce.marker = str(tmp_path / "crashed")
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's actor class, by value
    crashed = tmp_path / "crashed.parquet"
    ray_job.run(_job(corpus, crashed), progress=False, actor_class=CrashOnce)
    assert Path(CrashOnce.marker).exists()  # an actor did die mid-job
    ids, vectors = read_output(crashed)
    assert ids == want_ids and len(set(ids)) == N_TEXTS  # every row exactly once
    assert np.array_equal(vectors, want)


def _descendants(pid: int) -> set:
    """This process and every process under it (read from /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = stat.read_text().rsplit(")", 1)[1].split()[1]
        except (OSError, IndexError):
            continue
        children.setdefault(parent, []).append(stat.parent.name)
    out, todo = set(), [str(pid)]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += children.get(p, [])
    return out


def test_local_ray_listens_on_loopback_only(ray_local):
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("ss is not available")
    ray_pids = _descendants(os.getpid())
    ours = [line for line in out.stdout.splitlines() if any(f"pid={p}," in line for p in ray_pids)]
    assert ours, "no listening socket of this Ray found"
    for line in ours:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")), line
