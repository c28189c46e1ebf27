// The standard Prometheus process series of the running process, read from /proc at scrape time:
// process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
// process_open_fds, process_max_fds, process_start_time_seconds (the names every Prometheus client
// library uses, so that stock dashboards and alerts work). prometheus-cpp has no such collector.
#pragma once

#include <prometheus/metric_family.h>

#include <vector>

namespace pipeinfer::metrics {

// The families as of now; a value that cannot be read is left out (never reported as 0).
std::vector<prometheus::MetricFamily> ProcessMetricFamilies();

}  // namespace pipeinfer::metrics
