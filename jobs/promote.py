"""Promotion and rollback of the ``champion`` alias, gated by the latest shadow comparison.

``batchscore promote --config F [--model NAME] [--force --reason TEXT]``: move ``champion`` to the version
``challenger`` names, only when the latest comparison of exactly that pair in the config's
``shadow.comparison`` table passed. ``--rollback`` moves ``champion`` back to the version it replaced.
Who, when and why go into model version tags (``batchscore.*``); the replaced version keeps the alias
``previous_champion``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchscore.jobs.config import ScoringJobConfig, load_job_config
from batchscore.jobs.errors import BatchscoreError
from batchscore.jobs.mlflow_http import check_servers
from batchscore.jobs.runner import configure_logging, guarded, job_parser
from batchscore.jobs.tracking import tracking_target

log = logging.getLogger("batchscore.promote")

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous_champion"
_NAME = re.compile(r"^models:/(?P<name>[^/@]+)")


class PromotionRefusedError(BatchscoreError, RuntimeError):
    """The comparison does not allow the promotion (or there is none)."""


@dataclass(frozen=True)
class Promotion:
    model: str
    champion: str  # the version that is champion now
    previous: str  # the version that was
    reason: str


def _client(cfg: ScoringJobConfig) -> Any:
    from mlflow import MlflowClient

    target = tracking_target(cfg.mlflow)
    check_servers(target.tracking_uri, target.registry_uri, target.timeout_s)
    return MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.registry_uri)


def _alias(client: Any, model: str, alias: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model, alias).version)
    except MlflowException:
        raise PromotionRefusedError(f"model {model!r} has no alias {alias!r}") from None


def latest_comparison(spark: Any, cfg: ScoringJobConfig, champion_uri: str, challenger_uri: str) -> Any:
    """The newest comparison row of this exact pair, or None."""
    from pyspark.sql import functions as F

    from batchscore.jobs.tables import read_table, table_exists

    assert cfg.shadow is not None
    section = cfg.shadow.comparison
    if not table_exists(spark, section):
        return None
    table = read_table(spark, section)
    rows = (
        table.where((F.col("champion_uri") == champion_uri) & (F.col("challenger_uri") == challenger_uri))
        .orderBy(F.col("compared_at").desc())
        .limit(1)
        .collect()
    )
    return rows[0] if rows else None


def promote(
    spark: Any, cfg: ScoringJobConfig, model: str | None = None, *, force: bool = False, reason: str = ""
) -> Promotion:
    """Move ``champion`` to the ``challenger`` version when the latest comparison of the pair passed."""
    if cfg.shadow is None:
        raise PromotionRefusedError(f"job {cfg.name!r} has no 'shadow' section: no comparison table to check")
    name = model or _model_name(cfg)
    client = _client(cfg)
    champion, challenger = _alias(client, name, CHAMPION), _alias(client, name, CHALLENGER)
    if champion == challenger:
        raise PromotionRefusedError(f"{name}: version {challenger} is already the champion")
    pair = (f"models:/{name}/{champion}", f"models:/{name}/{challenger}")
    row = latest_comparison(spark, cfg, *pair)
    if row is None:
        why = f"no comparison of v{champion} (champion) and v{challenger} (challenger)"
        if not force:
            raise PromotionRefusedError(f"{name}: {why}; run `batchscore shadow` first, or --force")
    elif row["verdict"] != "pass":
        why = (
            f"the latest comparison ({row['ds']}, job run {row['job_run_id']}) failed: {row['failed_checks']}"
        )
        if not force:
            raise PromotionRefusedError(f"{name}: refusing to promote v{challenger}: {why}; or --force")
    else:
        why = f"comparison on {row['ds']} passed (job run {row['job_run_id']})"
    forced = force and (row is None or row["verdict"] != "pass")
    text = f"--force ({reason or 'no reason given'}); {why}" if forced else why
    _move(client, name, to=challenger, replaced=champion, action="promoted", reason=text)
    return Promotion(name, challenger, champion, text)


def rollback(cfg: ScoringJobConfig, model: str | None = None, reason: str = "") -> Promotion:
    """Move ``champion`` back to the version it replaced (alias ``previous_champion``)."""
    name = model or _model_name(cfg)
    client = _client(cfg)
    current, previous = _alias(client, name, CHAMPION), _alias(client, name, PREVIOUS)
    text = f"rollback from v{current}" + (f": {reason}" if reason else "")
    _move(client, name, to=previous, replaced=current, action="rolled_back", reason=text)
    return Promotion(name, previous, current, text)


def _move(client: Any, name: str, *, to: str, replaced: str, action: str, reason: str) -> None:
    who, when = getpass.getuser(), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    client.set_registered_model_alias(name, CHAMPION, to)
    client.set_registered_model_alias(name, PREVIOUS, replaced)
    for key, value in (
        (f"batchscore.{action}_by", who),
        (f"batchscore.{action}_at", when),
        (f"batchscore.{action}_reason", reason),
        ("batchscore.replaced_version", replaced),
    ):
        client.set_model_version_tag(name, to, key, value)
    client.set_model_version_tag(name, replaced, "batchscore.replaced_at", when)
    log.info("%s: champion v%s -> v%s (%s, by %s)", name, replaced, to, reason, who)


def _model_name(cfg: ScoringJobConfig) -> str:
    match = _NAME.match(cfg.model.uri)
    if match is None:
        raise PromotionRefusedError(f"cannot tell the registered model from {cfg.model.uri!r}; pass --model")
    return match.group("name")


def main(argv: Sequence[str] | None = None) -> int:
    """``batchscore promote``: 0 when the alias moved, 2 when refused or on a user error."""
    parser = job_parser("batchscore promote", __doc__.splitlines()[0])
    parser.add_argument("--model", help="registered model name (default: the config's model)")
    parser.add_argument("--rollback", action="store_true", help="restore the previous champion")
    parser.add_argument("--force", action="store_true", help="promote without a passing comparison")
    parser.add_argument("--reason", default="", help="recorded in the version's tags")
    args = parser.parse_args(argv)
    configure_logging(args.log_level)

    def body() -> int:
        cfg = load_job_config(args.config, args.overrides)
        if args.rollback:
            done = rollback(cfg, args.model, args.reason)
        else:
            from batchscore.jobs.session import spark_session

            with spark_session(cfg.spark.profile, cfg.spark.conf) as spark:
                done = promote(spark, cfg, args.model, force=args.force, reason=args.reason)
        print(f"{done.model}: champion is now v{done.champion} (was v{done.previous}); {done.reason}")
        return 0

    return guarded(body)
