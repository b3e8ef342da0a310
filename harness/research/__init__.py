"""Agentic Deep-Research mode (He et al. 2025, §4): the predictor plans subqueries, compressors search a corpus and
summarise for each subquery, the predictor answers from the summaries (`run.run_research`; config: `research:`)."""

from harness.research.protocol import Plan, PlanError, Subquery, parse_plan
from harness.research.search import Hit, SearchTool, research_corpus

__all__ = ["Hit", "Plan", "PlanError", "SearchTool", "Subquery", "parse_plan", "research_corpus"]
