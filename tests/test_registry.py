"""Model resolution against a real MLflow registry, and output columns from real signatures."""

from __future__ import annotations

import numpy as np
import pytest

from batchscore.jobs.errors import ModelResolutionError, SignatureError
from batchscore.jobs.registry import ResolvedModel, output_fields, resolve_model, signature_input_names
from tests.conftest import Registry


def test_alias_resolves_to_a_pinned_version(registry: Registry) -> None:
    resolved = resolve_model("models:/fraud@champion", registry.tracking_uri)
    ref = resolved.ref
    assert (ref.name, ref.version) == ("fraud", registry.champion)
    assert ref.load_uri == f"models:/fraud/{registry.champion}"
    assert ref.cache_key == ref.load_uri
    assert ref.run_id and ref.flavor == "pytorch"
    assert ref.artifact_uri  # where the version's files are
    assert signature_input_names(resolved) == tuple(f"f{i}" for i in range(16))


def test_version_latest_and_run_uris(registry: Registry) -> None:
    by_version = resolve_model(f"models:/fraud/{registry.challenger}", registry.tracking_uri).ref
    assert by_version.version == registry.challenger
    latest = resolve_model("models:/fraud/latest", registry.tracking_uri).ref
    assert int(latest.version or 0) >= int(registry.challenger)
    by_run = resolve_model(f"runs:/{by_version.run_id}/model", registry.tracking_uri).ref
    assert by_run.version is None and by_run.run_id == by_version.run_id
    assert by_run.load_uri == f"runs:/{by_version.run_id}/model"


def test_unknown_model_alias_and_run_are_named(registry: Registry) -> None:
    with pytest.raises(ModelResolutionError, match="model 'nosuch' is not registered"):
        resolve_model("models:/nosuch@champion", registry.tracking_uri)
    with pytest.raises(ModelResolutionError, match=r"'models:/fraud@gold' does not exist.*'champion'"):
        resolve_model("models:/fraud@gold", registry.tracking_uri)
    with pytest.raises(ModelResolutionError, match="does not exist"):
        resolve_model("models:/fraud/999", registry.tracking_uri)
    with pytest.raises(ModelResolutionError, match="run 'deadbeef' does not exist"):
        resolve_model("runs:/deadbeef/model", registry.tracking_uri)
    with pytest.raises(ModelResolutionError, match="expected models:/<name>@<alias>"):
        resolve_model("models:/fraud/Production/x", registry.tracking_uri)


def _resolved(signature: object) -> ResolvedModel:
    from batchscore.udfs.spec import ModelRef

    ref = ModelRef(
        "models:/m/1", "models:/m/1", "m", "1", "r", "file:///x", "pyfunc", "sqlite://", "sqlite://"
    )
    return ResolvedModel(ref, signature, ("python_function",))


def test_output_fields_from_signatures() -> None:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("double", "x")])
    named = ModelSignature(inputs, Schema([ColSpec("double", "p_fraud"), ColSpec("long", "bucket")]))
    fields = output_fields(_resolved(named), "prediction")
    assert [(f.name, f.dtype, f.kind, f.index) for f in fields] == [
        ("p_fraud", "float64", "scalar", 0),
        ("bucket", "int64", "scalar", 1),
    ]
    unnamed = ModelSignature(inputs, Schema([ColSpec("float")]))
    assert output_fields(_resolved(unnamed), "score")[0].name == "score"
    scalar = ModelSignature(inputs, Schema([TensorSpec(np.dtype("float32"), (-1, 1))]))
    assert output_fields(_resolved(scalar), "score")[0].spark_type == "float"
    vector = ModelSignature(inputs, Schema([TensorSpec(np.dtype("float32"), (-1, 8))]))
    field = output_fields(_resolved(vector), "embedding")[0]
    assert (field.kind, field.spark_type) == ("vector", "array<float>")


def test_missing_or_unusable_output_signature_is_an_error() -> None:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    with pytest.raises(SignatureError, match="has no output signature"):
        output_fields(_resolved(None), "p")
    strings = ModelSignature(Schema([ColSpec("double", "x")]), Schema([ColSpec("string", "label")]))
    with pytest.raises(SignatureError, match="expected a numeric or boolean output type, found"):
        output_fields(_resolved(strings), "p")
    images = ModelSignature(
        Schema([ColSpec("double", "x")]), Schema([TensorSpec(np.dtype("float32"), (-1, 3, 4))])
    )
    with pytest.raises(SignatureError, match=r"expected output shape \(-1,\) or \(-1, k\)"):
        output_fields(_resolved(images), "p")


def test_several_named_tensor_outputs_become_one_struct_column() -> None:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    from batchscore.jobs.registry import signature_row_shape

    signature = ModelSignature(
        Schema([TensorSpec(np.dtype("float32"), (-1, 3, 64, 64))]),
        Schema(
            [
                TensorSpec(np.dtype("float32"), (-1, 1), "prob"),
                TensorSpec(np.dtype("float32"), (-1, 16), "embedding"),
            ]
        ),
    )
    (field,) = output_fields(_resolved(signature), "pred")
    assert field.spark_type == "struct<prob:float,embedding:array<float>>"
    assert signature_row_shape(_resolved(signature)) == (3, 64, 64)
    assert signature_row_shape(_resolved(ModelSignature(Schema([ColSpec("double", "x")])))) == ()
