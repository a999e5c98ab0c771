from __future__ import annotations

from pathlib import Path

import pytest

from batchscore.jobs.config import load_job_config, load_spark_profile
from batchscore.jobs.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

VALID = """
name: t
model: {uri: "models:/fraud@champion"}
input: {path: warehouse/in}
output: {path: warehouse/out, key_columns: [id]}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_shipped_job_configs_validate() -> None:
    for path in (ROOT / "conf" / "jobs").glob("*.yaml"):
        cfg = load_job_config(path)
        assert cfg.output.key_columns


def test_shipped_spark_profiles_validate() -> None:
    for path in (ROOT / "conf" / "spark").glob("*.yaml"):
        profile = load_spark_profile(path.stem)
        assert profile.app_name
    assert load_spark_profile("local").conf["spark.python.worker.reuse"] == "true"


def test_defaults_point_at_the_embedded_stack(tmp_path: Path) -> None:
    cfg = load_job_config(write(tmp_path, VALID))
    assert cfg.model.batch_size == 4096
    assert cfg.input.partition_column == "ds"
    assert cfg.mlflow.tracking_uri is None
    assert cfg.spark.profile == "local"


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, VALID.replace('uri: "models:/fraud@champion"', 'uri: "models:/f@c", batch_sise: 3')
    )
    with pytest.raises(ConfigError) as err:
        load_job_config(path)
    assert str(path) in str(err.value)
    assert "model.batch_sise: unknown key" in str(err.value)


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = write(
        tmp_path, VALID.replace('uri: "models:/fraud@champion"', 'uri: "models:/f@c", batch_size: big')
    )
    with pytest.raises(ConfigError, match=r"model\.batch_size: .*integer.*found 'big'"):
        load_job_config(path)


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("output: {path: warehouse/out, key_columns: [id]}", ""))
    with pytest.raises(ConfigError, match="output: required key is missing"):
        load_job_config(path)


def test_exactly_one_of_path_and_table(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("input: {path: warehouse/in}", "input: {path: a, table: b}"))
    with pytest.raises(ConfigError, match="exactly one of 'path' or 'table'"):
        load_job_config(path)


def test_model_uri_scheme_is_checked(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("models:/fraud@champion", "s3://bucket/model"))
    with pytest.raises(ConfigError, match="expected a models:/ or runs:/ URI"):
        load_job_config(path)


def test_overrides_are_parsed_and_validated(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    cfg = load_job_config(path, ["model.batch_size=128", "output.passthrough_columns=[a, b]"])
    assert cfg.model.batch_size == 128
    assert cfg.output.passthrough_columns == ["a", "b"]
    with pytest.raises(ConfigError, match=r"model\.batch_size"):
        load_job_config(path, ["model.batch_size=-1"])
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_job_config(path, ["model.batch_size"])


def test_environment_interpolation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = VALID.replace("warehouse/in", '"${IN_PATH}"').replace("warehouse/out", '"${OUT_PATH:-/data/out}"')
    monkeypatch.setenv("IN_PATH", "/data/in")
    cfg = load_job_config(write(tmp_path, text))
    assert (cfg.input.path, cfg.output.path) == ("/data/in", "/data/out")
    monkeypatch.delenv("IN_PATH")
    with pytest.raises(ConfigError, match="'IN_PATH' is referenced but not set"):
        load_job_config(write(tmp_path, text))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_job_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job_config(write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_job_config(write(tmp_path, "- a\n- b\n"))


def test_unknown_spark_profile_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown Spark profile 'nope'; expected one of \[.*'local'"):
        load_spark_profile("nope")


def test_device_and_autocast_are_checked(tmp_path: Path) -> None:
    ok = load_job_config(write(tmp_path, VALID), ["model.device=cuda:1", "model.autocast=bf16"])
    assert (ok.model.device, ok.model.autocast) == ("cuda:1", "bf16")
    with pytest.raises(
        ConfigError, match=r"model\.device: .*expected auto, cpu, cuda or cuda:N, found 'gpu0'"
    ):
        load_job_config(write(tmp_path, VALID), ["model.device=gpu0"])
    with pytest.raises(ConfigError, match=r"model\.autocast"):
        load_job_config(write(tmp_path, VALID), ["model.autocast=fp8"])
    assert load_job_config(write(tmp_path, VALID)).model.cpu_kernels == "onednn"
    assert load_job_config(write(tmp_path, VALID), ["model.cpu_kernels=torch"]).model.cpu_kernels == "torch"
    with pytest.raises(ConfigError, match=r"model\.cpu_kernels: .*'onednn' or 'torch'"):
        load_job_config(write(tmp_path, VALID), ["model.cpu_kernels=mkl"])


def test_gpu_profile_points_at_the_shipped_discovery_script() -> None:
    profile = load_spark_profile("gpu")
    script = Path(profile.conf["spark.executor.resource.gpu.discoveryScript"])
    assert script.is_file() and script.stat().st_mode & 0o111
    assert profile.conf["spark.task.resource.gpu.amount"] == "1"
    assert profile.conf["spark.python.worker.reuse"] == "true"


def test_configuration_reference_is_what_the_config_models_generate() -> None:
    """docs/configuration.md lists every key the loaders accept, with its type, default and meaning:
    regenerate it with `make docs` after changing a config model."""
    from batchscore.jobs.config import ScoringJobConfig
    from batchscore.jobs.config_docs import render, rows

    written = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert written == render(), "docs/configuration.md is stale: run `make docs`"
    keys = [key for key, *_ in rows(ScoringJobConfig)]
    for key in ("model.uri", "input.read_mode", "quality.quarantine.table", "shadow.thresholds",
                "canary.fraction", "mlflow.timeout_s", "spark.conf"):  # fmt: skip
        assert key in keys and f"| `{key}` |" in written
    assert "(undocumented)" not in written, "every config field has a description"
