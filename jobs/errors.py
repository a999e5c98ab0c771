"""User-facing errors: each message names what was expected and what was found."""

from __future__ import annotations


class BatchscoreError(Exception):
    """Base class for errors caused by configuration, input or environment, not by a bug."""


class ConfigError(BatchscoreError, ValueError):
    """A config file is missing, unparsable, or has an unknown key or a wrong type."""


class DeltaJarsMissingError(BatchscoreError, RuntimeError):
    """Delta Lake's JVM jars are not in the local cache or not on the driver's classpath."""


class ModelResolutionError(BatchscoreError, LookupError):
    """A model URI names no model, version, alias or run in the configured registry."""


class SignatureError(BatchscoreError, ValueError):
    """A model's MLflow signature is missing or cannot describe the output columns."""


class SchemaMismatchError(BatchscoreError, ValueError):
    """The input table lacks columns the job or the model needs."""


class TableLocationError(BatchscoreError, ValueError):
    """A table name, path or partition value is not valid."""


class MissingPartitionError(BatchscoreError, LookupError):
    """The input has no data for the requested partition."""


class InvalidInputError(BatchscoreError, ValueError):
    """Too many input rows failed validation, or one did under ``on_invalid: fail``."""


class ExecutorError(BatchscoreError, RuntimeError):
    """A task failed on an executor for a reason meant for the user (e.g. the model failed to load)."""


class ConcurrentWriteError(BatchscoreError, RuntimeError):
    """Another job committed to the same table or partition while this one wrote it; nothing was committed."""


class RegistryError(BatchscoreError, RuntimeError):
    """The MLflow tracking or registry server failed (an HTTP error, an overloaded or wrong server)."""
