"""What spark-submit runs: ``spark-submit … jobs/launcher/batchscore_job.py <job> --config … [--ds …]``.

spark-submit puts this file's folder first on ``sys.path``; nothing else is in it, so no module of ours
shadows an installed package. The job runs from the installed ``jobs`` package (``batchscore <job>``).
"""

from batchscore.jobs.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
