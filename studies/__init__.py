"""The studies of LED-Merging, run from a clone of the repository and not installed with
``mergekit-led`` (docs/architecture.md, "The studies").

``common`` (what both worlds share: the steps, typed results, summary, findings and report),
``toy`` (a tiny Llama family trained offline: ``python -m studies.toy``, ``make demo``) and
``smollm2`` (SmolLM2-135M-Instruct and HarmBench: ``python -m studies.smollm2``,
``make real-quick``, ``make real-study``). Each imports only the ones before it.
"""
