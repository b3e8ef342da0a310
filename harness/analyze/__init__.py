"""The analysis layer, split by job: `frames` (model names and sizes, the per-prediction frame, MI-row choice and
`summarize_cell`, the one cell summariser that run, sweep, report and compare share), `stats` (fits and tests),
`render` (formatting, markdown tables, plots), `report` (the `harness report` sections) and `compare` (the paired
`harness compare` of two cells). Every number is computed from results-store rows or a run's items; nothing here
loads a model or imports a backend.
"""
