"""Log contract (docs/rollouts.md): validation messages, formats, unfinished runs, observations."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from physrl import contract, fitting
from physrl.fitting import LogValidationError


def _part(run_dir):
    return run_dir / "rollouts" / "part-00000.parquet"


def _rewrite(run_dir, change):
    df = pq.read_table(_part(run_dir)).to_pandas()
    df = change(df)
    df.to_parquet(_part(run_dir), index=False)


def test_schema_round_trip(run_dir, tmp_path):
    """synthesize writes the contract; reading it back gives the same rows in every format."""
    run = fitting.load_runs(run_dir)[0]
    table = pq.read_table(_part(run_dir))
    assert table.schema.field("step").type == pa.int64() and table.schema.field("rs").type == pa.bool_()
    assert run.finished and run.run_id == "synthetic-4"
    assert [e.w for e in run.environments] == [0.5, 0.5, 0.0]
    assert run.environments[2].coordinates == (2.0,)
    assert len(run.rollouts) == 3 * 3 * 16 + 20 * 2 * 2
    run.rollouts.to_csv(tmp_path / "t.csv", index=False)
    run.rollouts.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    for name in ("t.csv", "t.jsonl"):
        again = fitting.load_runs(tmp_path / name)[0]
        pd.testing.assert_frame_equal(again.rollouts.reset_index(drop=True), run.rollouts, check_dtype=False)
        assert not again.finished and any("manifest" in n for n in again.notes)


@pytest.mark.parametrize("change, file_row_column", [
    (lambda df: df.drop(columns=["reward"]), ("part-00000.parquet", None, "'reward'", "missing column")),
    (lambda df: df.assign(step=df["step"].astype(str)), ("part-00000.parquet", "row 0", "'step'", "expected int64")),
    (lambda df: df.assign(reward=np.where(np.arange(len(df)) == 7, 1.5, df["reward"])),
     ("part-00000.parquet", "row 7", "'reward'", "outside [0, 1]")),
    (lambda df: df.assign(step=np.where(np.arange(len(df)) == 3, -1, df["step"])),
     ("part-00000.parquet", "row 3", "'step'", "negative step")),
    (lambda df: df.assign(rs=df["rs"].astype(int)), ("part-00000.parquet", "row 0", "'rs'", "expected bool")),
])
def test_bad_parquet_is_rejected_naming_file_row_and_column(run_dir, change, file_row_column):
    _rewrite(run_dir, change)
    with pytest.raises(LogValidationError) as info:
        fitting.load_runs(run_dir)
    message = str(info.value)
    for part in file_row_column:
        if part is not None:
            assert part in message, message


def test_bad_csv_cell_names_its_row(run_dir, tmp_path):
    df = fitting.load_runs(run_dir)[0].rollouts.astype(object)
    df.loc[5, "step"] = "three"
    df.loc[9, "reward"] = -0.2
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(LogValidationError, match=r"bad\.csv, row 5, column 'step': expected int64, got 'three'"):
        fitting.load_runs(tmp_path / "bad.csv")
    df.loc[5, "step"] = 3
    df.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(LogValidationError, match=r"row 9, column 'reward': value -0.2 outside"):
        fitting.load_runs(tmp_path / "bad.csv")


def test_bad_jsonl_type_is_rejected(run_dir, tmp_path):
    df = fitting.load_runs(run_dir)[0].rollouts.astype(object)
    df.loc[2, "reward"] = "high"
    df.to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    with pytest.raises(LogValidationError, match=r"row 2, column 'reward': expected a finite float64, got 'high'"):
        fitting.load_runs(tmp_path / "bad.jsonl")


def test_extra_columns_ignored_temp_files_skipped_unfinished_flagged(run_dir):
    _rewrite(run_dir, lambda df: df.assign(extra_column="anything", note_inserted=True))
    (run_dir / "rollouts" / ".part-00001.parquet.tmp").write_bytes(b"half-written chunk")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["status"] = "running"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    run = fitting.load_runs(run_dir)[0]
    assert list(run.rollouts.columns) == list(contract.COLUMNS)
    assert run.finished is False
    assert any("not finished" in note for note in run.notes)
    res_notes = fitting.fit([run], transfer="none", n_starts=1, max_nfev=5).notes
    assert any("not finished" in note for note in res_notes)


def test_missing_path_and_empty_run_dir(tmp_path, run_dir):
    with pytest.raises(FileNotFoundError):
        fitting.load_runs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogValidationError, match=r"empty, field 'manifest.json': .* has none"):
        fitting.load_runs(tmp_path / "empty")
    _part(run_dir).unlink()
    with pytest.raises(LogValidationError, match="no rollouts/part"):
        fitting.load_runs(run_dir)


def test_observations_counts_and_jeffreys_intervals(run_dir):
    run = fitting.load_runs(run_dir)[0]
    obs = fitting.observations(run)
    row = obs[(obs.phase == "eval") & (obs.step == 10) & (obs.env_id == "env-01")].iloc[0]
    raw = run.rollouts[(run.rollouts.phase == "eval") & (run.rollouts.step == 10)
                       & (run.rollouts.env_id == "env-01")]
    assert row.n == len(raw) == 16 and row.n_rs == raw.rs.sum()
    assert row.p_hat == pytest.approx(raw.rs.mean())
    assert row.a_hat == pytest.approx(raw.reward[raw.rs].mean())
    assert row.b_hat == pytest.approx(raw.reward[~raw.rs].mean())
    k, n = row.n_rs, row.n
    assert row.p_lo == pytest.approx(stats.beta.ppf(0.025, k + 0.5, n - k + 0.5))
    assert row.p_hi == pytest.approx(stats.beta.ppf(0.975, k + 0.5, n - k + 0.5))
    assert bool(row.binary)


def test_no_rs_rollouts_means_no_a_hat_not_an_error(run_dir):
    _rewrite(run_dir, lambda df: df.assign(rs=False))
    run = fitting.load_runs(run_dir)[0]
    obs = fitting.observations(run)
    assert (obs.a_n == 0).all() and obs.a_hat.isna().all() and obs.p_hat.eq(0).all()
    assert obs.b_hat.notna().all()
    lo, hi = fitting.jeffreys_interval([0, 5, 3], [10, 5, 0])
    assert lo[0] == 0 and hi[1] == 1 and np.isnan(lo[2])


def test_a_duplicated_chunk_is_rejected_not_fitted_twice(run_dir):
    """A copied chunk would double every count and shrink the error bars silently."""
    import shutil

    shutil.copy(_part(run_dir), run_dir / "rollouts" / "part-00001.parquet")
    with pytest.raises(LogValidationError, match=r"part-00001\.parquet.*row 0.*group_id.*logged twice"):
        fitting.load_runs([run_dir])


def test_a_nan_reward_is_named_not_finite(run_dir, tmp_path):
    df = fitting.load_runs(run_dir)[0].rollouts.copy()
    df.loc[3, "reward"] = float("nan")
    df.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(LogValidationError, match=r"row 3, column 'reward': expected a finite float64, got "
                                                 r"(nan \(not finite\)|missing \(null\))"):
        fitting.load_runs(tmp_path / "nan.csv")
