"""``python -m otel_sqlite_exporter``: the ``otel-sqlite`` command."""

from otel_sqlite_exporter._cli import run

run()
