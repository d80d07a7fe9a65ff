"""Resuming from a checkpoint over a damaged rollout log (a tester's kill -9 / truncate / rm trials): a deleted
chunk used to leave a run marked finished with train steps 50-99 missing and no warning; a truncated chunk gave
'rerun the same command to resume', which could never work. ChunkWriter.truncate now refuses both, naming the
file or the steps, before it changes anything."""

import pyarrow.parquet as pq
import pytest

from physrl.contract import ChunkWriter, RolloutGapError, chunk_paths


def _write(run_dir, steps, chunk_every=2):
    w = ChunkWriter(run_dir, "r1")
    for step in steps:
        w.add(step=step, phase="train", env_id=["e"] * 2, group_id=[0, 0], prompt=["p"] * 2, completion=["c"] * 2,
              reward=[0.0, 1.0], rs=[False, True], rs_score=[0.0, 1.0])
        if step % chunk_every == chunk_every - 1:
            w.flush()
    w.flush()
    return w


def test_truncate_keeps_rows_before_the_checkpoint_and_drops_the_rest(tmp_path):
    _write(tmp_path, range(8))
    dropped = ChunkWriter(tmp_path, "r1").truncate(4)
    assert dropped == 8  # steps 4-7, two rows each
    steps = sorted(set().union(*(pq.read_table(p).to_pandas().step for p in chunk_paths(tmp_path))))
    assert steps == [0, 1, 2, 3]


def test_a_deleted_chunk_before_the_checkpoint_is_refused_by_its_steps(tmp_path):
    _write(tmp_path, range(8))
    paths = chunk_paths(tmp_path)
    paths[1].unlink()  # steps 2-3
    before = {p.name: p.stat().st_mtime_ns for p in chunk_paths(tmp_path)}
    with pytest.raises(RolloutGapError, match=r"no train rows for steps 2-3, written before checkpoint-6"):
        ChunkWriter(tmp_path, "r1").truncate(6)
    assert {p.name: p.stat().st_mtime_ns for p in chunk_paths(tmp_path)} == before  # nothing changed
    assert ChunkWriter(tmp_path, "r1").truncate(2) == 8  # a checkpoint before the hole still resumes (drops 4-7)


def test_an_unreadable_chunk_is_named_and_nothing_is_changed(tmp_path):
    _write(tmp_path, range(6))
    bad = chunk_paths(tmp_path)[1]
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(RolloutGapError, match=rf"{bad.name} cannot be read .*start it again in a new folder"):
        ChunkWriter(tmp_path, "r1").truncate(4)
    assert len(chunk_paths(tmp_path)) == 3
