"""Model resolution on the driver: an alias or URI becomes one pinned version, run id and artifact location.

Executors receive the resulting :class:`~udfs.spec.ModelRef` and load exactly ``load_uri``, so moving an
alias while a job runs changes nothing for that job.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from batchscore.jobs.errors import ModelResolutionError, RegistryError, SignatureError
from batchscore.jobs.mlflow_http import check_servers, shown_uri
from batchscore.udfs.spec import SPARK_TYPES, ModelRef, OutputField, OutputKind

log = logging.getLogger(__name__)

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+|latest)$")
_RUN = re.compile(r"^runs:/(?P<run_id>[0-9a-zA-Z]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class ResolvedModel:
    """A pinned model with what the driver needs to plan the job: its signature's inputs and outputs."""

    ref: ModelRef
    signature: Any  # mlflow.models.ModelSignature | None
    flavors: tuple[str, ...]


def _client(tracking_uri: str, registry_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)


def _registry_failure(exc: Any, registry_uri: str, action: str) -> RegistryError:
    """A registry call that failed for another reason than a missing model, as one line."""
    first = " ".join(str(getattr(exc, "message", exc)).split())[:300]
    return RegistryError(
        f"the MLflow registry at {shown_uri(registry_uri)} failed to {action} ({exc.error_code}): {first}"
    )


def _pin_registered(client: Any, uri: str, registry_uri: str) -> Any:
    """The ModelVersion an alias or version URI names, with errors that name what exists instead."""
    from mlflow.exceptions import MlflowException

    alias_match, version_match = _ALIAS.match(uri), _VERSION.match(uri)
    match = alias_match or version_match
    if match is None:
        raise ModelResolutionError(
            "expected models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>, "
            f"found {uri!r}"
        )
    name = match.group("name")
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise _registry_failure(exc, registry_uri, f"look up model {name!r}") from None
        raise ModelResolutionError(f"model {name!r} is not registered in {shown_uri(registry_uri)}") from None
    try:
        if alias_match:
            return client.get_model_version_by_alias(name, alias_match.group("alias"))
        version = version_match.group("version") if version_match else ""
        if version == "latest":
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise ModelResolutionError(f"model {name!r} has no versions in {shown_uri(registry_uri)}")
            return max(versions, key=lambda v: int(v.version))
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise _registry_failure(exc, registry_uri, f"resolve {uri!r}") from None
        aliases = sorted(getattr(registered, "aliases", {}) or {})
        raise ModelResolutionError(
            f"{uri!r} does not exist in {shown_uri(registry_uri)}; model {name!r} has aliases {aliases}"
        ) from None


def resolve_model(
    uri: str, tracking_uri: str, registry_uri: str | None = None, *, timeout_s: float = 60.0
) -> ResolvedModel:
    """Pin ``uri`` to a concrete model version (or run artifact) and read its MLmodel metadata."""
    import mlflow
    from mlflow.exceptions import MlflowException

    registry_uri = registry_uri or tracking_uri
    check_servers(tracking_uri, registry_uri, timeout_s)
    client = _client(tracking_uri, registry_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri)
    name: str | None
    version: str | None
    if uri.startswith("runs:/"):
        run_match = _RUN.match(uri)
        if run_match is None:
            raise ModelResolutionError(f"expected runs:/<run_id>/<path>, found {uri!r}")
        name, version, run_id, load_uri = None, None, run_match.group("run_id"), uri
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise _registry_failure(exc, tracking_uri, f"look up run {run_id!r}") from None
            raise ModelResolutionError(
                f"run {run_id!r} does not exist in {shown_uri(tracking_uri)}"
            ) from None
        artifact_uri = uri
    else:
        model_version = _pin_registered(client, uri, registry_uri)
        name, version, run_id = model_version.name, str(model_version.version), model_version.run_id
        load_uri = f"models:/{name}/{version}"
        artifact_uri = client.get_model_version_download_uri(name, version)
    try:
        info = mlflow.models.get_model_info(load_uri)
    except MlflowException as exc:
        raise ModelResolutionError(f"cannot read the MLmodel of {load_uri}: {exc.message}") from exc
    flavors = tuple(info.flavors)
    ref = ModelRef(
        requested_uri=uri,
        load_uri=load_uri,
        name=name,
        version=version,
        run_id=run_id or info.run_id,
        artifact_uri=artifact_uri,
        flavor="pytorch" if "pytorch" in flavors else "pyfunc",
        tracking_uri=tracking_uri,
        registry_uri=registry_uri,
    )
    log.info("resolved %s -> %s (run %s)", uri, load_uri, ref.run_id)
    return ResolvedModel(ref=ref, signature=info.signature, flavors=flavors)


def signature_input_names(resolved: ResolvedModel) -> tuple[str, ...]:
    """Column names of a column-based input signature; empty for tensor signatures or none."""
    signature = resolved.signature
    if signature is None or signature.inputs is None or signature.inputs.is_tensor_spec():
        return ()
    return tuple(str(name) for name in signature.inputs.input_names())


def _numpy_dtype(spec: Any, where: str) -> str:
    dtype = spec.type if spec.__class__.__name__ == "TensorSpec" else spec.type.to_numpy()
    name = str(getattr(dtype, "name", dtype))
    if name not in SPARK_TYPES:
        raise SignatureError(f"{where}: expected a numeric or boolean output type, found {name}")
    return name


def _tensor_field(spec: Any, name: str, where: str) -> OutputField:
    shape = tuple(spec.shape)
    width = 1 if len(shape) == 1 else int(shape[1]) if len(shape) == 2 else -2
    if width < 0:
        raise SignatureError(f"{where}: expected output shape (-1,) or (-1, k), found {shape}")
    kind: OutputKind = "scalar" if width == 1 else "vector"
    return OutputField(name, _numpy_dtype(spec, where), kind)


def signature_row_shape(resolved: ResolvedModel) -> tuple[int, ...]:
    """Per-row input shape of a single-tensor input signature, e.g. ``(3, 64, 64)``; empty otherwise."""
    signature = resolved.signature
    if signature is None or signature.inputs is None or not signature.inputs.is_tensor_spec():
        return ()
    specs = list(signature.inputs.inputs)
    if len(specs) != 1 or any(int(d) < 0 for d in specs[0].shape[1:]):
        return ()
    return tuple(int(d) for d in specs[0].shape[1:])


def output_fields(resolved: ResolvedModel, prediction_column: str) -> tuple[OutputField, ...]:
    """The prediction columns the model's output signature describes.

    Column-based outputs give one scalar column each (``index`` = position in the model's output row).
    One tensor output of shape ``(-1,)``/``(-1, 1)`` gives a scalar column, ``(-1, k)`` an array column;
    several named tensor outputs give one struct column named ``prediction_column``.
    """
    where = f"model {resolved.ref.load_uri}"
    signature = resolved.signature
    if signature is None or signature.outputs is None:
        raise SignatureError(
            f"{where} has no output signature; log it with `signature=infer_signature(X, model(X))` "
            "so the output columns and types are known before scoring"
        )
    specs = list(signature.outputs.inputs)
    if signature.outputs.is_tensor_spec():
        if len(specs) == 1:
            return (_tensor_field(specs[0], specs[0].name or prediction_column, where),)
        # Several named tensors (a model returning a dict or tuple): one struct column of them.
        children = tuple(
            _tensor_field(spec, spec.name or f"output_{i}", where) for i, spec in enumerate(specs)
        )
        return (OutputField(prediction_column, "", "struct", children=children),)
    fields = []
    for index, spec in enumerate(specs):
        name = spec.name or (prediction_column if len(specs) == 1 else f"{prediction_column}_{index}")
        fields.append(OutputField(name, _numpy_dtype(spec, where), "scalar", index))
    return tuple(fields)
