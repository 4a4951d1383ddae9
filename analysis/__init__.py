"""Helpers of statistic_analysis.py: loading feature files, classifiers and metrics, baselines,
figures and reports. Nothing here runs a language model: it reads feature files only."""
from .data import AnalysisInputError

__all__ = ["AnalysisInputError"]
