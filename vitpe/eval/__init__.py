"""Evaluation at other resolutions: the sweep (records in, table and plot out) and the strategies."""
from .strategies import STRATEGIES, applicable_strategies, apply_strategy
from .sweep import Record, load_model, plot, sweep, to_markdown, write_csv, write_results
