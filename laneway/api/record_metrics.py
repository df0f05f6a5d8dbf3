"""``/metrics``: what the database writers did with the records they write off the request path
(usage rows, failover records; ``storage.batch_writer``), by ``kind`` (``usage``, ``failovers``).

    laneway_records_buffered{kind}              waiting to be written (grows while the database is away)
    laneway_records_written_total{kind}         written
    laneway_records_dropped_total{kind}         given up: nothing is lost without being counted here
    laneway_record_write_failures_total{kind}   batch writes that failed (each retried)
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from laneway.storage.batch_writer import WriterStatistics


def writer_metrics(writers: Mapping[str, WriterStatistics]) -> list[Metric]:
    """The records written to the database off the request path (usage rows, failover records),
    by ``kind``: waiting in the bounded buffer (they grow while the database is away, and are
    written when it is back), written, and dropped (the oldest, when the buffer was full; a batch
    the database refused; what was left at shutdown): nothing is lost without being counted here."""
    kind = ["kind"]
    buffered = GaugeMetricFamily(
        "laneway_records_buffered", "Records waiting to be written to the database", labels=kind
    )
    written = CounterMetricFamily(
        "laneway_records_written_total", "Records written to the database", labels=kind
    )
    dropped = CounterMetricFamily(
        "laneway_records_dropped_total",
        "Records given up without being written (the buffer was full, or the database refused them)",
        labels=kind,
    )
    failed = CounterMetricFamily(
        "laneway_record_write_failures_total", "Batch writes that failed (and were retried)", labels=kind
    )
    for name, stats in sorted(writers.items()):
        buffered.add_metric([name], stats.buffered)
        written.add_metric([name], stats.written)
        dropped.add_metric([name], stats.dropped)
        failed.add_metric([name], stats.failed_writes)
    return [buffered, written, dropped, failed]
