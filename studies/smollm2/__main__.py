"""``python -m studies.smollm2`` (``make real-quick``, ``make real-study``): the real-model
world's study; ``python -m studies.smollm2.get_assets`` (``make real-assets``) fetches its
assets first."""

from studies.smollm2.study import run_real_demo
from studies.toy.cli import study_command

study_command("smollm2", default_out="real-study-output", run_seeds=run_real_demo)()
