"""The analysis layer: statistics over stored results (`stats`), the `harness report` writer (`report`) and the
paired `harness compare` of two cells (`compare`). Every number is computed from results-store rows; nothing here
loads a model or imports a backend.
"""
