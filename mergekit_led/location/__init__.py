"""The Location step: importance scores of a model on a task's data, written as a store."""

from mergekit_led.core.locate_options import LocateOptions
from mergekit_led.location.locator import locate, plan_locate

__all__ = ["LocateOptions", "locate", "plan_locate"]
