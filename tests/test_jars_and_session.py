"""Delta jar cache errors and the session factory's reuse of an active session."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from batchscore.jobs.errors import DeltaJarsMissingError
from batchscore.jobs.jars import artifact_name, cached_delta_jars, delta_coordinate


def test_coordinate_matches_installed_delta_and_spark() -> None:
    from importlib import metadata

    import pyspark

    minor = ".".join(pyspark.__version__.split(".")[:2])
    assert delta_coordinate() == f"io.delta:delta-spark_{minor}_2.13:{metadata.version('delta-spark')}"


def test_missing_jars_error_says_how_to_fetch_them(tmp_path: Path) -> None:
    with pytest.raises(
        DeltaJarsMissingError, match=r"not cached in .*jars \(it is empty or missing\).*setup"
    ):
        cached_delta_jars(tmp_path)
    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / "MANIFEST").write_text("io.delta:delta-spark_4.0_2.13:3.0.0\n")
    with pytest.raises(DeltaJarsMissingError, match=r"it holds io\.delta:delta-spark_4\.0_2\.13:3\.0\.0"):
        cached_delta_jars(tmp_path)


def test_artifact_names_drop_versions() -> None:
    assert artifact_name("jackson-core-2.13.5.jar") == "jackson-core"
    assert artifact_name("delta-spark_4.2_2.13-4.4.0.jar") == "delta-spark_4.2_2.13"
    assert artifact_name("zstd-jni-1.5.7-3.jar") == "zstd-jni"


def test_project_cache_holds_delta_but_not_spark_jars(spark) -> None:
    names = [Path(j).name for j in cached_delta_jars()]
    assert any(n.startswith("io.delta_delta-spark_") for n in names)
    assert not any("hadoop-client" in n or "jackson-core" in n for n in names)


def test_active_session_is_reused_and_not_stopped(spark) -> None:
    from batchscore.jobs.session import get_or_create_session, spark_session

    session, created = get_or_create_session("no-such-profile-is-read-when-a-session-is-active")
    assert session is spark and not created
    with spark_session("local") as inner:
        assert inner is spark
    assert spark.range(3).count() == 3, "the shared session must still be running"


def test_profile_java_options_reach_the_jvm(spark) -> None:
    """The local profile's Arrow settings are system properties of the JVM the session runs in."""
    system = spark.sparkContext._jvm.java.lang.System
    assert system.getProperty("arrow.enable_unsafe_memory_access") == "true"
    assert system.getProperty("arrow.enable_null_check_for_get") == "false"


def _arrow_refault_probe() -> Callable[[object], tuple[str | None, list[int]]]:
    """A function (pickled by value, being nested) that reports, from the process it runs in, the jemalloc
    conf that process started with and the page faults of each of six rounds of allocating, writing and
    freeing 8 x 4 MiB buffers in the Arrow pool our scoring tasks use."""

    def probe(_: object) -> tuple[str | None, list[int]]:
        import os
        import resource

        import numpy as np
        import pyarrow as pa

        from batchscore.udfs.worker_memory import use_arrow_pool

        use_arrow_pool()
        faults = []
        for _round in range(6):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            buffers = [pa.allocate_buffer(4 << 20) for _ in range(8)]
            for buffer in buffers:
                np.frombuffer(buffer, dtype=np.uint8)[:] = 1
            del buffers, buffer
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return os.environ.get("JE_ARROW_MALLOC_CONF"), faults

    return probe


def test_workers_reuse_freed_arrow_pages_instead_of_faulting_them_in_again(spark) -> None:
    """The profile starts Python workers with JE_ARROW_MALLOC_CONF, so Arrow's jemalloc keeps the pages a
    batch frees for the next one; a process started without it faults them in again every round."""
    from pyspark import cloudpickle

    from batchscore.jobs.config import load_spark_profile
    from batchscore.udfs.worker_memory import ARROW_JEMALLOC_CONF

    probe = _arrow_refault_probe()
    [(conf, faults)] = spark.sparkContext.parallelize([0], 1).map(probe).collect()
    key = "spark.executorEnv.JE_ARROW_MALLOC_CONF"
    assert all(load_spark_profile(p).conf[key] == ARROW_JEMALLOC_CONF for p in ("local", "cluster", "gpu"))
    assert conf == ARROW_JEMALLOC_CONF
    assert max(faults[2:]) < 256, f"a worker faulted its freed Arrow pages in again: {faults}"

    unset = ("JE_ARROW_MALLOC_CONF", "ARROW_DEFAULT_MEMORY_POOL")
    control = subprocess.run(
        [sys.executable, "-c", "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read())(0))"],
        input=cloudpickle.dumps(probe),
        env={k: v for k, v in os.environ.items() if k not in unset},
        capture_output=True,
        check=True,
    )
    conf, faults = ast.literal_eval(control.stdout.decode())
    assert conf is None
    assert min(faults[2:]) >= 1024, f"without the conf, Arrow's jemalloc kept its pages: {faults}"


def test_spark_submit_keeps_the_profile_java_options_beside_its_log4j_file(tmp_path: Path) -> None:
    from batchscore.jobs.submit import spark_submit_command

    config = tmp_path / "job.yaml"
    config.write_text(
        "name: t\nmodel: {uri: 'models:/m/1'}\ninput: {path: /data/in}\n"
        "output: {path: /data/out, key_columns: [id]}\n"
    )
    command, _ = spark_submit_command("score", ["--config", str(config)])
    assert "--driver-java-options" not in command  # it would replace the profile's options
    options = [arg for arg in command if arg.startswith("spark.driver.extraJavaOptions=")]
    assert len(options) == 1
    assert "-Dlog4j2.configurationFile=" in options[0]
    assert "-Darrow.enable_unsafe_memory_access=true" in options[0]


def _job_file(tmp_path: Path) -> str:
    config = tmp_path / "job.yaml"
    config.write_text(
        "name: t\nmodel: {uri: 'models:/m/1'}\ninput: {path: /data/in}\n"
        "output: {path: /data/out, key_columns: [id]}\nspark: {profile: cluster}\n"
    )
    return str(config)


def _value(command: list[str], option: str) -> str | None:
    return command[command.index(option) + 1] if option in command else None


def test_submit_ships_the_package_to_a_cluster_and_nothing_to_local_mode(tmp_path: Path) -> None:
    import zipfile

    from batchscore.jobs.errors import ConfigError
    from batchscore.jobs.submit import spark_submit_command

    config = _job_file(tmp_path)
    local, _ = spark_submit_command("score", ["--config", config, "--master", "local[2]"])
    assert _value(local, "--master") == "local[2]" and "--py-files" not in local
    cluster, _ = spark_submit_command(
        "score", ["--config", config, "--master", "spark://h:7077", "--ds", "x"]
    )
    assert _value(cluster, "--master") == "spark://h:7077"
    shipped = _value(cluster, "--py-files")
    assert shipped and shipped.endswith(".zip")
    names = zipfile.ZipFile(shipped).namelist()
    assert {
        "batchscore/__init__.py",
        "batchscore/udfs/scorer.py",
        "batchscore/conf/spark/cluster.yaml",
    } <= set(names)
    assert not [n for n in names if "__pycache__" in n]
    # The job's own arguments reach the launcher; spark-submit's options do not.
    assert cluster[-5:] == ["score", "--config", config, "--ds", "x"]
    # A wheel is shipped as a .zip copy (Spark imports only .zip/.egg/.jar); --no-ship ships only it.
    wheel = tmp_path / "batchscore-0.1.0-py3-none-any.whl"
    wheel.write_bytes(Path(shipped).read_bytes())
    only, _ = spark_submit_command(
        "score", ["--config", config, "--master", "yarn", "--py-files", str(wheel), "--no-ship"]
    )
    copy = _value(only, "--py-files") or ""
    assert copy.endswith(f"/ship/{wheel.stem}.zip") and Path(copy).read_bytes() == wheel.read_bytes()
    assert "--no-ship" not in only
    with pytest.raises(
        ConfigError, match=r"expected \.zip, \.egg, \.jar, \.py or \.whl files, found 'x\.tgz'"
    ):
        spark_submit_command("score", ["--config", config, "--master", "yarn", "--py-files", "x.tgz"])


def test_the_package_imported_from_a_zip_reads_its_packaged_configs(tmp_path: Path) -> None:
    """spark-submit puts --py-files first on the driver's path too: the driver then runs from the zip."""
    from batchscore.jobs.submit import shipped_package

    shipped = shipped_package(tmp_path / "ship")
    probe = (
        "import batchscore.jobs.config as c\n"
        "print(c.__file__)\n"
        "print(c.load_spark_profile('cluster').app_name)\n"
        "print(c.conf_dir())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BATCHSCORE_CONF_DIR"}
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "PYTHONPATH": str(shipped), "BATCHSCORE_HOME": str(tmp_path / "home")},
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    module, app_name, conf = proc.stdout.split()
    assert module.startswith(str(shipped)) and app_name == "batchscore"
    assert (
        Path(conf).parent == tmp_path / "home" / "conf"
        and (Path(conf) / "jobs" / "fraud_nightly.yaml").is_file()
    )
