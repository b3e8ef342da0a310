"""The results store: one database (SQLite file by default, PostgreSQL on request) holding every run's rows.

    from harness.store import Store
    with Store.open("results/store.db") as st:
        st.start_run(run_id="r1", name="demo", config=cfg)
        ...

See `harness.store.store.Store` for the write API and `harness.results` for loading into pandas.
"""

from harness.store.redact import REDACTED, is_secret_key, redact, redact_url
from harness.store.schema import CALL_KINDS, CELL_STATUSES, RUN_STATUSES, SCHEMA_VERSION, STAGES, TABLES, VIEW_NAME
from harness.store.store import (
    MIGRATIONS,
    Store,
    StoredCompression,
    StoredPrediction,
    collect_package_versions,
    knob_hash,
    now,
)

__all__ = [
    "CALL_KINDS",
    "CELL_STATUSES",
    "MIGRATIONS",
    "REDACTED",
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "STAGES",
    "TABLES",
    "VIEW_NAME",
    "Store",
    "StoredCompression",
    "StoredPrediction",
    "collect_package_versions",
    "is_secret_key",
    "knob_hash",
    "now",
    "redact",
    "redact_url",
]
