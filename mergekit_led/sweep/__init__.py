"""Which densities and weights to use: ``mergekit-led sweep`` (docs/sweep.md).

``grid``: GRID.yml and each setting's config; ``selection``: the rule that
picks one setting; ``run``: merge and evaluate every setting, resumably;
``report``: sweep.md, pareto.png, best.yml.
"""

from mergekit_led.sweep.grid import Setting, load_grid, parse_grid, setting_config
from mergekit_led.sweep.selection import SelectionRule
from mergekit_led.sweep.sweeper import SweepOptions, SweepResult, run_sweep

__all__ = [
    "SelectionRule",
    "Setting",
    "SweepOptions",
    "SweepResult",
    "load_grid",
    "parse_grid",
    "run_sweep",
    "setting_config",
]
