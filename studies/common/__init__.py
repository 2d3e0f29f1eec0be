"""What both studies share: the steps, typed results, evaluation, summary, findings, report."""
