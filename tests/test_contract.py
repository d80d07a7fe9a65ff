"""The log contract (physrl/contract/, docs/rollouts.md): the typed manifest, every faithful
encoding accepted, every unfaithful one rejected by name, the measured prior."""

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from physrl import contract, fitting
from physrl.contract import Environment, LogValidationError, Manifest


def _part(run_dir):
    return run_dir / "rollouts" / "part-00000.parquet"


def _manifest(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


def _write_manifest(run_dir, data):
    (run_dir / "manifest.json").write_text(json.dumps(data))


# ---- the typed manifest --------------------------------------------------------------------------
def test_manifest_round_trip_keeps_namespaces_and_unknown_keys():
    data = {"run_id": "r1", "status": "finished", "seed": 3, "steps": 40, "rows_written": 10,
            "environments": [{"env_id": "a", "w": 0.5, "coordinates": [0, 1]},
                             {"env_id": "b", "w": 0.5, "observation": {"a_lo": 0.05, "a_hi": 0.5,
                                                                       "b_lo": 0.1, "b_hi": 1}},
                             {"env_id": "c", "w": 0}],
            "classifier": {"name": "pattern", "version": "1"}, "organisms": {"config": {"n_envs": 2}},
            "someone_elses": {"x": 1}}
    m = Manifest.from_dict(data)
    assert m.environments[0] == Environment("a", 0.5, (0.0, 1.0))
    assert m.environments[1].bounds() == (0.05, 0.5, 0.1, 1.0) and m.environments[2].bounds() == (0, 1, 0, 1)
    assert m.trained_env_ids == ["a", "b"] and m.organisms == {"config": {"n_envs": 2}}
    assert m.extra == {"someone_elses": {"x": 1}}
    again = m.to_dict()
    assert again == {**data, "contract_version": 1,
                     "environments": [{"env_id": "a", "w": 0.5, "coordinates": [0.0, 1.0]},
                                      {"env_id": "b", "w": 0.5, "observation": {"a_lo": 0.05, "a_hi": 0.5,
                                                                                "b_lo": 0.1, "b_hi": 1.0}},
                                      {"env_id": "c", "w": 0.0}]}
    assert Manifest.from_dict(again) == m


@pytest.mark.parametrize("change, field, problem", [
    (lambda d: d.pop("run_id"), "run_id", "missing"),
    (lambda d: d.pop("status"), "status", "missing"),
    (lambda d: d.update(status="done"), "status", "must be one of"),
    (lambda d: d.pop("environments"), "environments", "missing"),
    (lambda d: d.update(environments=[]), "environments", "non-empty list"),
    (lambda d: d["environments"][1].pop("w"), "environments[1].w",
     "environment 'env-01': 'w' is missing (the training weight in [0, 1], 0 for a held-out environment; it has no "
     "default)"),
    (lambda d: d["environments"][0].pop("env_id"), "environments[0].env_id", "environment 0: 'env_id' is missing"),
    (lambda d: d["environments"][0].update(w=1.5), "environments[0].w", "'w' must be a number in [0, 1]"),
    (lambda d: d["environments"][0].update(w="0.5"), "environments[0].w", "'w' must be a number"),
    (lambda d: d["environments"][0].update(coordinates="0"), "environments[0].coordinates", "'coordinates' must"),
    (lambda d: d["environments"][0].update(observation={"a_lo": 0.5, "a_hi": 0.4, "b_lo": 0, "b_hi": 1}),
     "environments[0].observation", "a_lo < a_hi"),
    (lambda d: d["environments"][0].update(observation={"a_lo": 0, "a_hi": 1}), "environments[0].observation",
     "exactly the keys"),
    (lambda d: d["environments"].__setitem__(0, "e0"), "environments[0]", "an environment is an object"),
    (lambda d: d["environments"].append({"env_id": "env-00", "w": 0}), "environments", "more than once"),
    (lambda d: [e.update(w=1.0) for e in d["environments"]], "environments",  # w = 1 per env: the fit was N× too fast
     "w sums to 3 over the environments, but each w is the environment's share of the RL batch"),
    (lambda d: d.update(seed="7"), "seed", "an integer"),
    (lambda d: d.update(p0=1.0), "p0", "(0, 1)"),
    (lambda d: d.update(rows_written=-1), "rows_written", ">= 0"),
    (lambda d: d.update(organisms=[1]), "organisms", "an object"),
    (lambda d: d.update(contract_version=99), "contract_version", "newer than this reader"),
])
def test_bad_manifest_is_rejected_naming_file_and_field(run_dir, change, field, problem):
    data = _manifest(run_dir)
    change(data)
    _write_manifest(run_dir, data)
    with pytest.raises(LogValidationError) as info:
        fitting.load_runs(run_dir)
    message = str(info.value)
    assert message.startswith(str(run_dir / "manifest.json")), message
    assert f"field {field!r}" in message and problem in message, message
    assert info.value.column == field


def test_manifest_that_is_not_json_or_not_an_object(run_dir):
    (run_dir / "manifest.json").write_text("{truncated")
    with pytest.raises(LogValidationError, match=r"manifest\.json: not valid JSON"):
        fitting.load_runs(run_dir)
    (run_dir / "manifest.json").write_text("[1, 2]")
    with pytest.raises(LogValidationError, match=r"manifest\.json: a manifest is a JSON object, got list"):
        fitting.load_runs(run_dir)


def test_writer_refuses_a_bad_manifest_and_writes_nothing(tmp_path):
    with pytest.raises(LogValidationError, match="environments"):
        contract.write_manifest(tmp_path, {"run_id": "r", "status": "running", "environments": [{"env_id": "a"}]})
    assert not (tmp_path / "manifest.json").exists()
    contract.write_manifest(tmp_path, {"run_id": "r", "status": "running", "environments": [{"env_id": "a", "w": 1}],
                                       "organisms": {"config": {"seed": 0}}})
    m = contract.update_manifest(tmp_path, status="finished", organisms={"grpo_seconds": 2.5})
    assert m.status == "finished" and m.organisms == {"config": {"seed": 0}, "grpo_seconds": 2.5}
    assert list(tmp_path.iterdir()) == [tmp_path / "manifest.json"]  # no temporary file left behind


# ---- inconsistent or missing contract fields ------------------------------------------------------
def test_rows_env_id_missing_from_the_manifest(run_dir):
    data = _manifest(run_dir)
    data["environments"] = data["environments"][:2]
    _write_manifest(run_dir, data)
    df = pq.read_table(_part(run_dir)).to_pandas()
    first = int(np.flatnonzero(df.env_id == "env-02")[0])
    with pytest.raises(LogValidationError, match=rf"part-00000\.parquet, row {first}, column 'env_id': 'env-02' is "
                                                 r"not in the manifest's environments \['env-00', 'env-01'\]"):
        fitting.load_runs(run_dir)


def test_rows_run_id_disagreeing_with_the_manifest(run_dir):
    df = pq.read_table(_part(run_dir)).to_pandas()
    df.loc[11, "run_id"] = "someone-else"
    df.to_parquet(_part(run_dir), index=False)
    with pytest.raises(LogValidationError, match=r"part-00000\.parquet, row 11, column 'run_id': 'someone-else' "
                                                 r"disagrees with the manifest's run_id 'synthetic-4'"):
        fitting.load_runs(run_dir)


def test_run_dir_without_manifest(run_dir):
    (run_dir / "manifest.json").unlink()
    with pytest.raises(LogValidationError, match=r"run, field 'manifest\.json': a run directory holds manifest"):
        fitting.load_runs(run_dir)


def test_same_run_given_twice(run_dir, tmp_path):
    with pytest.raises(LogValidationError, match=r"column 'run_id': run 'synthetic-4' is given twice: its rollouts "
                                                 "would be counted twice"):
        fitting.load_runs([run_dir, run_dir])
    shutil.copytree(run_dir, tmp_path / "copy")
    with pytest.raises(LogValidationError, match=r"copy, column 'run_id': run 'synthetic-4' is given twice \(also "
                                                 r"in .*run\)"):
        fitting.load_runs([run_dir, tmp_path / "copy"])


def test_finished_run_missing_a_chunk(run_dir):
    data = _manifest(run_dir)
    data["rows_written"] = 5000
    _write_manifest(run_dir, data)
    with pytest.raises(LogValidationError, match=r"field 'rows_written': the finished run wrote 5000 rows but .* "
                                                 r"holds 224 \(a chunk is missing"):
        fitting.load_runs(run_dir)


def test_table_without_manifest_is_read_with_a_warning(run_dir, tmp_path):
    run = fitting.load_runs(run_dir)[0]
    run.rollouts.to_csv(tmp_path / "t.csv", index=False)
    again = fitting.load_runs(tmp_path / "t.csv")[0]
    assert [(e.env_id, e.w) for e in again.environments] == [("env-00", 0.5), ("env-01", 0.5), ("env-02", 0.0)]
    assert len(again.warnings) == 1 and "no manifest" in again.warnings[0] and "1/2" in again.warnings[0]
    assert again.manifest is None and not again.finished


# ---- every faithful encoding ---------------------------------------------------------------------
def _variants(df):
    """The same rows in encodings a Parquet writer may choose."""
    table = pa.Table.from_pandas(df, preserve_index=False)

    def retype(**types):
        cols = [table[n].cast(types[n]) if n in types else table[n] for n in table.column_names]
        return pa.table(cols, names=table.column_names)

    cat = df.assign(env_id=df.env_id.astype("category"), phase=df.phase.astype("category"),
                    run_id=df.run_id.astype("category"))
    return {
        "categorical": pa.Table.from_pandas(cat, preserve_index=False),
        "large_string": retype(run_id=pa.large_string(), phase=pa.large_string(), env_id=pa.large_string(),
                               prompt=pa.large_string(), completion=pa.large_string()),
        "string_view": retype(env_id=pa.string_view(), phase=pa.string_view(), completion=pa.string_view()),
        "narrow_ints": retype(step=pa.int16(), group_id=pa.uint32()),
        "int8_step_float32_score": retype(step=pa.int32(), group_id=pa.int8() if df.group_id.max() < 128
                                          else pa.int16(), rs_score=pa.float32()),
    }


def test_every_faithful_encoding_loads_as_the_canonical_rows(run_dir):
    canonical = fitting.load_runs(run_dir)[0].rollouts
    df = pq.read_table(_part(run_dir)).to_pandas()
    for name, table in _variants(df).items():
        pq.write_table(table, _part(run_dir))
        assert table.schema != pq.read_table(_part(run_dir)).schema or name, name
        run = fitting.load_runs(run_dir)[0]
        pd.testing.assert_frame_equal(run.rollouts, canonical, check_exact=name != "int8_step_float32_score",
                                      rtol=1e-6, obj=name)


def test_all_null_text_columns_load_like_the_csv(run_dir, tmp_path):
    df = pq.read_table(_part(run_dir)).to_pandas().assign(prompt=None, completion=None)
    table = pa.Table.from_pandas(df, preserve_index=False)
    assert table.schema.field("prompt").type == pa.null()
    pq.write_table(table, _part(run_dir))
    run = fitting.load_runs(run_dir)[0]
    assert run.rollouts.prompt.isna().all() and len(run.rollouts) == len(df)
    run.rollouts.to_csv(tmp_path / "t.csv", index=False)
    from_csv = fitting.load_runs(tmp_path / "t.csv")[0].rollouts
    pd.testing.assert_frame_equal(from_csv, run.rollouts)


@pytest.mark.parametrize("column, arrow_type, expected", [
    ("env_id", pa.null(), "expected string, got "),
    ("step", pa.float64(), "expected int64, got Arrow type double"),
    ("step", pa.string(), "expected int64, got Arrow type string"),
    ("rs", pa.int64(), "expected bool, got Arrow type int64"),
    ("reward", pa.string(), "expected float64, got Arrow type string"),
])
def test_unfaithful_encodings_are_rejected_by_name(run_dir, column, arrow_type, expected):
    table = pq.read_table(_part(run_dir))
    if arrow_type == pa.null():
        col = pa.nulls(table.num_rows)
    elif arrow_type == pa.string():
        col = table[column].cast(pa.string())
    else:
        col = table[column].cast(arrow_type)
    table = table.set_column(table.column_names.index(column), column, col)
    pq.write_table(table, _part(run_dir))
    with pytest.raises(LogValidationError) as info:
        fitting.load_runs(run_dir)
    assert f"part-00000.parquet, row 0, column {column!r}: {expected}" in str(info.value)


def test_uint64_beyond_int64_is_rejected(run_dir):
    table = pq.read_table(_part(run_dir))
    big = pa.array([2 ** 63 + 5] * table.num_rows, pa.uint64())
    pq.write_table(table.set_column(table.column_names.index("group_id"), "group_id", big), _part(run_dir))
    with pytest.raises(LogValidationError, match=r"column 'group_id': cannot be read as int64"):
        fitting.load_runs(run_dir)


# ---- chunk writer ----------------------------------------------------------------------------------
def test_chunk_writer_round_trip_and_truncate(tmp_path):
    w = contract.ChunkWriter(tmp_path, "r", [("note", pa.string())])
    for step, phase in [(0, "eval"), (0, "train"), (1, "train"), (2, "train"), (2, "eval"), (3, "train")]:
        w.add(step=step, phase=phase, env_id=["a", "a"], group_id=[0, 0], prompt=["p", "p"], completion=["x", "y"],
              reward=[1.0, 0.0], rs=[True, False], rs_score=[0.9, 0.1], note=["n", "n"])
        if (step, phase) in ((1, "train"), (2, "eval")):
            w.flush()
    w.flush()
    assert [p.name for p in contract.chunk_paths(tmp_path)] == [
        "part-00000000-00000001-00000.parquet", "part-00000002-00000002-00001.parquet",
        "part-00000003-00000003-00002.parquet"]
    df = contract.read_rollouts(tmp_path)
    assert len(df) == 12 == contract.rows_on_disk(tmp_path) and list(df.columns)[-1] == "note"
    (tmp_path / "rollouts" / ".part-x.parquet.1234.tmp").write_bytes(b"half")
    again = contract.ChunkWriter(tmp_path, "r", [("note", pa.string())])
    assert again.truncate(2) == 4  # train rows at steps 2 and 3 go; eval at 2 stays
    df = contract.read_rollouts(tmp_path)
    assert sorted(set(zip(df.step, df.phase))) == [(0, "eval"), (0, "train"), (1, "train"), (2, "eval")]
    assert not list((tmp_path / "rollouts").glob("*.tmp"))
    with pytest.raises(ValueError, match="missing \\['note'\\]"):
        again.add(step=4, phase="train", env_id=["a"], group_id=[0], prompt=["p"], completion=["x"], reward=[1.0],
                  rs=[True], rs_score=[0.9])


# ---- the measured prior ----------------------------------------------------------------------------
def test_measured_prior_counts_and_jeffreys_interval(run_dir):
    run = fitting.load_runs(run_dir)[0]
    df = run.rollouts
    at0 = df[df.step == 0]
    prior = run.prior
    assert prior.step == 0 and prior.env_ids == ("env-00", "env-01") and prior.phases == ("train", "eval")
    trained = at0[at0.env_id.isin(["env-00", "env-01"])]
    k, n = int(trained.rs.sum()), len(trained)
    assert (prior.pooled.n_rs, prior.pooled.n) == (k, n) and n == 2 * 16 + 2 * 2
    assert prior.pooled.lower == pytest.approx(stats.beta.ppf(0.025, k + 0.5, n - k + 0.5))
    assert prior.pooled.upper == pytest.approx(stats.beta.ppf(0.975, k + 0.5, n - k + 0.5))
    assert prior.pooled.value == pytest.approx((k + 0.5) / (n + 1))
    held = at0[at0.env_id == "env-02"]
    assert prior.per_env["env-02"].n == len(held) == 16 and prior.per_env["env-02"].n_rs == held.rs.sum()
    evals = run.measured_prior(phases=("eval",), env_ids=run.env_ids)
    assert evals.pooled.n == 3 * 16
    lo, hi = contract.jeffreys_interval(0, 10)
    assert lo == 0 and 0 < hi < 1
    with pytest.raises(ValueError, match="no rollouts in phases"):
        run.measured_prior(phases=("nope",))


# ---- through `physrl fit`: one line, exit 2; warnings printed and recorded -----------------------
def _no_w(run_dir):
    data = _manifest(run_dir)
    del data["environments"][1]["w"]
    _write_manifest(run_dir, data)
    return [str(run_dir)]


def _env_not_listed(run_dir):
    data = _manifest(run_dir)
    data["environments"] = data["environments"][:2]
    _write_manifest(run_dir, data)
    return [str(run_dir)]


def _other_run_id(run_dir):
    df = pq.read_table(_part(run_dir)).to_pandas()
    df.loc[0, "run_id"] = "other"
    df.to_parquet(_part(run_dir), index=False)
    return [str(run_dir)]


@pytest.mark.parametrize("make, message", [
    (_no_w, "manifest.json, field 'environments[1].w': environment 'env-01': 'w' is missing"),
    (_env_not_listed, "part-00000.parquet, row 112, column 'env_id': 'env-02' is not in the manifest's environments"),
    (_other_run_id, "part-00000.parquet, row 0, column 'run_id': 'other' disagrees with the manifest's run_id"),
    (lambda d: (d / "manifest.json").unlink() or [str(d)], "run, field 'manifest.json': a run directory holds"),
    (lambda d: [str(d), str(d)], "column 'run_id': run 'synthetic-4' is given twice"),
])
def test_fit_cli_names_the_file_and_field_and_exits_2(run_dir, tmp_path, capsys, make, message):
    from physrl.cli import main

    code = main(["fit", *make(run_dir), "--out", str(tmp_path / "fit"), "--no-figures"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "fit").exists()


def test_fit_cli_prints_and_records_reader_warnings(run_dir, tmp_path, capsys):
    from physrl.cli import main

    fitting.load_runs(run_dir)[0].rollouts.to_csv(tmp_path / "t.csv", index=False)
    data = _manifest(run_dir)
    data["status"] = "running"
    _write_manifest(run_dir, data)
    code = main(["fit", str(tmp_path / "t.csv"), "--out", str(tmp_path / "fit"), "--no-figures", "--max-nfev", "3",
                 "--transfer", "none"])
    err = capsys.readouterr().err
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("physrl fit: warning: run synthetic-4: ")]
    assert len(warnings) == 1 and "t.csv: no manifest" in warnings[0], err
    doc = json.loads((tmp_path / "fit" / "fit.json").read_text())
    assert any("warning: t.csv: no manifest" in note for note in doc["notes"])
    assert any("warning: t.csv: no manifest" in note for note in doc["runs"][0]["notes"])
