"""A Ray job that asks for more CPUs or GPUs than the cluster has is refused before submission (exit 2, naming the
resource) instead of hanging (ray #45909). A local cluster started with num_gpus=0 is asked for a GPU."""

import signal
from pathlib import Path

import pytest

from physrl.experiment.ray_resources import check_ray_resources
from physrl.experiment.executors import Executor, ExecutorConfig

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'physrl[ray]')")


def test_check_names_the_short_resource_and_the_cluster_total():
    check_ray_resources({"cpus_per_job": 2, "gpus_per_job": 0}, {"CPU": 2.0, "memory": 1e9})  # fits: no error
    with pytest.raises(ValueError, match=r"executor\.gpus_per_job = 1 asks each job for 1 GPU.*has 0 GPU"):
        check_ray_resources({"cpus_per_job": 1, "gpus_per_job": 1}, {"CPU": 2.0})
    with pytest.raises(ValueError, match=r"executor\.cpus_per_job = 3 .* at ray://head:10001 has 2 CPU in all"):
        check_ray_resources({"cpus_per_job": 3, "gpus_per_job": 0}, {"CPU": 2.0, "GPU": 0.0}, "ray://head:10001")


@pytest.fixture(scope="module")
def cpu_only_cluster():
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.mark.parametrize("field, value, resource", [("gpus_per_job", 1, "GPU"), ("cpus_per_job", 4, "CPU")])
def test_executor_refuses_a_job_the_cpu_only_cluster_cannot_run(tmp_path, cpu_only_cluster, field, value, resource):
    assert ray.cluster_resources().get("GPU", 0) == 0
    with pytest.raises(ValueError, match=rf"executor\.{field} = {value} asks each job for {value} {resource}"):
        Executor(ExecutorConfig(engine="ray", **{field: value}), tmp_path)
    with Executor(ExecutorConfig(engine="ray"), tmp_path) as ex:  # what fits still runs
        assert ex.result(ex.submit(pow, 2, 5)) == 32


def _hang(signum, frame):
    raise TimeoutError("physrl experiment did not return within 120 s: the GPU job was queued, not refused")


def test_experiment_asking_a_gpu_of_a_cpu_only_cluster_exits_2_naming_it(tmp_path, cpu_only_cluster, capsys):
    from physrl.cli import main

    old = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(120)
    try:
        code = main(["experiment", "demo", "--out", str(tmp_path / "x"), "--no-progress",
                     "--set", "executor.engine=ray", "--set", "executor.gpus_per_job=1"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "executor.gpus_per_job = 1" in err and "0 GPU" in err
    assert not any(p.is_dir() and not p.name.startswith(".") for p in (tmp_path / "x" / "runs").glob("*")), \
        "no organism run was started"
