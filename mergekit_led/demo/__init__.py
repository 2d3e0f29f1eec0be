"""``mergekit-led demo``: LED-Merging end to end on a tiny synthetic model family.

``world`` (vocabulary, corpus, tasks, splits and data mixtures), ``train``
(the family: base, instruct, safety, math, code), ``merging`` (each method's
grid as mergekit configs), ``selection`` (the rule, on the validation split),
``evaluate`` (greedy-decoding metrics), ``properties`` (the world's measured
root causes), ``score_dtype`` (elected sets from float32 vs bfloat16 stores),
``pipeline`` (one seed end to end; seeds in parallel),
``report`` (multi-seed tables, findings, markdown, JSON, plot), ``cli``.
"""
