"""``batchscore``: the command line.

batchscore setup                    fetch Delta's jars once into $BATCHSCORE_HOME/jars
batchscore jars                     print the cached jars, comma-separated (for spark-submit --jars)
batchscore score --config F …       run the scoring job in this process
batchscore shadow --config F …      champion and challenger in one pass, compared (verdict, report)
batchscore promote --config F [--rollback|--force]  move the champion alias (gated by the comparison)
batchscore submit score|shadow --config F [--master URL] …  run a job through spark-submit
    [--py-files F,…] [--archives A] [--no-ship]   a cluster master gets the package with --py-files
batchscore demo                     models, input and a spark-submit run on the embedded stack
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from batchscore.jobs.errors import BatchscoreError
from batchscore.jobs.redact import redact

log = logging.getLogger("batchscore")


def _setup(args: Sequence[str]) -> int:
    from batchscore.jobs.jars import resolve_delta_jars
    from batchscore.jobs.runner import configure_logging

    configure_logging()
    jars = resolve_delta_jars(force="--force" in args)
    print(f"{len(jars)} Delta Lake jars cached in {jars[0].rsplit('/', 1)[0]}")
    return 0


def _jars(_: Sequence[str]) -> int:
    from batchscore.jobs.jars import cached_delta_jars

    print(",".join(cached_delta_jars()))
    return 0


def _score(args: Sequence[str]) -> int:
    from batchscore.jobs.score import main as score_main

    return score_main(args)


def _shadow(args: Sequence[str]) -> int:
    from batchscore.jobs.shadow import main as shadow_main

    return shadow_main(args)


def _promote(args: Sequence[str]) -> int:
    from batchscore.jobs.promote import main as promote_main

    return promote_main(args)


def _submit(args: Sequence[str]) -> int:
    from batchscore.jobs.submit import submit

    if not args:
        raise BatchscoreError("usage: batchscore submit <job> --config <job.yaml> [job options]")
    return submit(args[0], args[1:])


def _demo(args: Sequence[str]) -> int:
    from batchscore.jobs.demo import main as demo_main

    return demo_main(args)


COMMANDS = {
    "setup": _setup,
    "jars": _jars,
    "score": _score,
    "shadow": _shadow,
    "promote": _promote,
    "submit": _submit,
    "demo": _demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print(__doc__)
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[args[0]](args[1:])
    except BatchscoreError as exc:
        print(f"batchscore {args[0]}: {redact(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
