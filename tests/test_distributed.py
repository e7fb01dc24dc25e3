"""Sharded evaluation: the merged results of 2 gloo ranks equal one process's, bit for bit."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pursamere.experiments.distributed import DistContext, _batches_of, evaluate_distributed, shard_indices, tiny_setup
from pursamere.evaluation.runner import evaluate

# 23 of the 24 images are clean-correct: 5 attack batches, rank 0 attacks 3 and rank 1 attacks 2.
# Batch 5 does not divide half of 23, so a split by image instead of by batch would move images to
# other batches (other random starts) and change some survival bits (checked when written).
N, BATCH = 24, 5


def _same_rows(a, b):
    """Rows equal in every field but the wall time."""
    assert [r["key"] for r in a] == [r["key"] for r in b]
    for r, s in zip(a, b):
        diff = {k for k in set(r) | set(s) if k != "seconds" and r.get(k) != s.get(k)}
        assert not diff, f"{r['key']}: {diff}"


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 64, 101])
def test_shard_indices_cover_every_index_once_in_order(n, world):
    shards = [list(shard_indices(n, r, world)) for r in range(world)]
    assert sum(shards, []) == list(range(n))  # disjoint, complete, in rank order
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("n_alive,batch", [(0, 4), (1, 4), (23, 5), (24, 8), (100, 7), (3, 64)])
def test_ranks_get_whole_batches_of_the_single_process_run(n_alive, batch, world):
    idx = torch.randperm(200)[:n_alive]  # the clean-correct images, any order
    shares = [_batches_of(idx, batch, DistContext(rank=r, world_size=world)) for r in range(world)]
    assert torch.equal(torch.cat(shares), idx)
    # cut each share as attack_flags does: exactly the batches one process makes
    cut = [c.tolist() for s in shares if len(s) for c in s.split(batch)]
    assert cut == [c.tolist() for c in idx.split(batch) if len(c)]


def test_shard_indices_rejects_bad_arguments():
    for args in [(-1, 0, 1), (4, 2, 2), (4, -1, 2), (4, 0, 0), (4.0, 0, 1)]:
        with pytest.raises(ValueError):
            shard_indices(*args)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread here, as in the torchrun ranks (OMP_NUM_THREADS=1 below): the
    classifier trained in this process is then bit-identical to theirs, and float sums are
    reassociated the same way in every run compared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(one_thread, tmp_path_factory):
    """The tiny preset built and evaluated by ``evaluate.evaluate`` in this one process."""
    setup = tiny_setup(n=N)
    return setup, evaluate(*setup[:5], tmp_path_factory.mktemp("ref"), batch_size=BATCH, progress=False)


def test_single_process_fallback_equals_evaluate(reference, tmp_path, monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    (defences, attacks, threats, x, y, _), ref = reference
    attacks, threats = attacks[:1], threats[:1]
    got = evaluate_distributed(defences, attacks, threats, x, y, tmp_path, batch_size=BATCH)
    keys = {r["key"] for r in got["rows"]}
    _same_rows([r for r in ref["rows"] if r["key"] in keys], got["rows"])
    assert len(got["rows"]) == len(defences) and got["meta"]["world_size"] == 1
    saved = json.loads((tmp_path / "results.json").read_text())
    _same_rows(saved["rows"], got["rows"])
    # resume: rows already written are reused, not recomputed
    again = evaluate_distributed(defences, attacks, threats, x, y, tmp_path, batch_size=BATCH)
    assert [r["seconds"] for r in again["rows"]] == [r["seconds"] for r in saved["rows"]]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_match_single_process(reference, tmp_path):
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "pursamere.experiments.distributed", "evaluate", "--preset", "tiny",
           "--n-images", str(N), "--batch-size", str(BATCH), "--out", str(out), "--device", "cpu", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads((out / "results.json").read_text())
    assert got["meta"]["world_size"] == 2 and got["meta"]["n"] == N
    assert (out / "table.md").exists()
    _, ref = reference
    _same_rows(ref["rows"], got["rows"])
    assert got["worst_case"] == ref["worst_case"]
    # the check has teeth: the attacks broke some images and spared others, in every defence
    for r in got["rows"]:
        if r["norm"] == "inf":
            assert "0" in r["survived"] and "1" in r["survived"], r["key"]
