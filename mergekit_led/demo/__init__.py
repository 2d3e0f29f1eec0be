"""``mergekit-led demo``: LED-Merging end to end on a tiny synthetic model family.

``world`` (vocabulary, corpus, tasks and splits), ``train`` (deterministic
training), ``evaluate`` (greedy-decoding metrics), ``pipeline`` (locate, merge
through mergekit configs, evaluate), ``study`` (density/weight grid on the
validation split), ``report`` (table, markdown, JSON, plot), ``cli``.
"""
