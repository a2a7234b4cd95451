"""Experiments: single runs, sweeps (in-process or Ray), ablation presets, comparison, evaluation and report."""
