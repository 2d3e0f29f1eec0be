"""``mergekit-led demo``: LED-Merging end to end on a tiny synthetic model family.

``world`` (vocabulary, corpus, tasks, splits and data mixtures), ``train``
(the family: base, instruct, safety, math, code), ``merging`` (each method's
grid in GRID.yml syntax, run by ``mergekit-led sweep`` on the validation split,
and the single merges as mergekit configs), ``evaluate`` (the world's sets as an
EVAL.yml for ``mergekit-led evaluate``), ``properties`` (the world's measured
root causes), ``score_dtype`` (elected sets from float32 vs bfloat16 stores),
``pipeline`` (one seed end to end; seeds in parallel),
``report`` (multi-seed tables, findings, markdown, JSON, plot), ``cli``.
"""
