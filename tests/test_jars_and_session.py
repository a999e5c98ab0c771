"""Delta jar cache errors and the session factory's reuse of an active session."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.errors import DeltaJarsMissingError
from jobs.jars import artifact_name, cached_delta_jars, delta_coordinate


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
    from jobs.session import get_or_create_session, spark_session

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


def test_spark_submit_keeps_the_profile_java_options_beside_its_log4j_file(tmp_path: Path) -> None:
    from jobs.submit import spark_submit_command

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
