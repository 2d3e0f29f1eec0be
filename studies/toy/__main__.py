"""``python -m studies.toy`` (``make demo``): the toy world's study."""

from studies.toy.cli import study_command

study_command("toy", default_out="demo-output")()
