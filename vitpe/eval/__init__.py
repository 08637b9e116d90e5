"""Evaluation at other resolutions: the sweep (records in, table and plot out), the summary over seeds
and the strategies."""
from .strategies import STRATEGIES, applicable_strategies, apply_strategy
from .summary import SummaryRow, summarize, summary_markdown, write_summary
from .sweep import Record, load_model, plot, sweep, to_markdown, write_csv, write_results
