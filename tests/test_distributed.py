"""Sharded evaluation: the ONE engine under torchrun with 2 gloo ranks writes one process's rows, bit for bit —
cascades and warm starts included."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pursamere.evaluation.sharding import DistContext, own_batches, shard_indices
from pursamere.experiments import engine, protocols
from pursamere.experiments.presets import TINY

# 24 table images attacked in batches of 5 (the tiny ensemble plan with another batch size): the
# clean-correct images make an odd number of batches, so a split by image instead of by batch would
# move images to other batches (other random starts) and change some survival bits.
N, BATCH = 24, 5
ONLY = ("undefended", "ERE descent")  # white-box PGD/APGD/Square; and gPGD, BPDA, exact, BPDA→exact, partial (cascades)


def _protocol():
    import dataclasses

    plan = dataclasses.replace(TINY.ensemble, n_test=N, eps=(0.15,), batch_size=BATCH)
    return protocols.ensemble(TINY, plan, only=ONLY)


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
    shares = [own_batches(idx, batch, DistContext(rank=r, world_size=world)) for r in range(world)]
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
    """The protocol run by the engine in this one process (it also trains and caches the models)."""
    work = tmp_path_factory.mktemp("work")
    run = engine.run(TINY, _protocol(), tmp_path_factory.mktemp("ref"),
                     engine.Options(workdir=str(work), progress=False, log=lambda *a: None))
    return work, run


def test_single_process_context_equals_no_context(reference, tmp_path, monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    work, ref = reference
    got = engine.run(TINY, _protocol(), tmp_path, engine.Options(workdir=str(work), progress=False, log=lambda *a: None,
                                                                 shards=DistContext()), artifacts=ref.artifacts)
    _same_rows(ref.results["rows"], got.results["rows"])
    assert got.results["meta"]["world_size"] == 1
    saved = json.loads((tmp_path / "results.json").read_text())
    _same_rows(saved["rows"], got.results["rows"])
    # resume: rows already written are reused, not recomputed
    again = engine.run(TINY, _protocol(), tmp_path, engine.Options(workdir=str(work), progress=False, resume=True,
                                                                   log=lambda *a: None), artifacts=ref.artifacts)
    assert [r["seconds"] for r in again.results["rows"]] == [r["seconds"] for r in saved["rows"]]


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
    work, ref = reference
    # the same command a user types: the CLI sees WORLD_SIZE and shards the one engine's loop
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "pursamere", "ensemble", "--preset", "tiny", "--workdir", str(work),
           "--n-images", str(N), "--batch-size", str(BATCH), "--eps", "0.15", "--only", ",".join(ONLY), "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads((out / "results.json").read_text())
    assert got["meta"]["world_size"] == 2 and got["meta"]["n"] == N and got["meta"]["batch_size"] == BATCH
    assert (out / "table.md").exists()
    _same_rows(ref.results["rows"], got["rows"])
    assert got["worst_case"] == ref.results["worst_case"]
    assert any(r["cascade"] for r in got["rows"]) and any(r["role"] == "bpda→exact" for r in got["rows"])
    # the check has teeth: the attacks broke some images and spared others, in every defence
    for r in got["rows"]:
        if not r["cascade"]:
            assert 0 in r["survived"] and 1 in r["survived"], r["key"]
