"""Evaluation at other resolutions: the sweep (records in, table and plot out), the summary over seeds
and the strategies."""
from .strategies import STRATEGIES, applicable_strategies, apply_strategy
from .summary import SummaryRow, plot_diagnostics, summarize, summary_markdown, write_summary
from .diagnostics import AttentionProbe, attention_sums, diagnostics_from_sums
from .sweep import Record, load_model, plot, read_csv, sweep, to_markdown, write_csv, write_results
