"""Adversarial cases (issue 12): hostile configs and data, killed runs, reused folders.

Each test is the regression test of one defect found by the adversarial pass;
the shared fixtures (tiny Llama family, stores) come from ``tests/conftest.py``.
"""
