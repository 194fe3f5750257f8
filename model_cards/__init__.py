"""Model and dataset cards from run metadata, release folders and Hub publishing."""

from .publish import plan_operations, prepare_release, publish
from .render import collect_run, render_dataset_card, render_model_card

__all__ = ["collect_run", "plan_operations", "prepare_release", "publish", "render_dataset_card", "render_model_card"]
