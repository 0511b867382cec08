"""How the service scales: on the two per-task limits the capacity measurement found.

Measured with ``make bench BENCH_ARGS='--only capacity'`` (docs/benchmarks.md, "Capacity of one
task"): one proxy with this task's limits, S3 behind it, warm pulls by 10, 25 and 50 clients at
once, slow clients, a cold burst. Nothing failed; two things ran out:

- **The one vCPU**, for clients that read fast. The proxy is one process with one event loop
  (threads only for disk reads and writes), and a warm pull through it costs CPU per byte from
  S3 and per request to S3: about 1.2 CPU-seconds per GB (up to 1.5 on a busy machine) and
  4 CPU-ms per layer, so a 212 MB image costs 0.22-0.28 CPU-seconds and one vCPU carries about
  3.6 such pulls a second (800 MB/s). Beyond that, pulls share the CPU and each takes longer
  (the health check is still answered within tens of ms). The signal is ECS's CPU utilization,
  against the one vCPU the event loop can use (``cpu_target_percent``), whatever the task's
  size: on a 2-vCPU task the service's CPU stays near 50 % at saturation.
- **The S3 connection pool**, for clients that read slowly. Each blob download in progress
  holds one of the pool's 64 connections while its client reads (measured: 54 connections at
  most for 55 requests in progress at 50 clients); past 64, the next downloads, and every other
  request that needs S3, wait for one to come free, while the CPU stays low (80 slow clients:
  the pool full, 16 of them waiting up to 9 s for their first byte, the CPU at a quarter). The
  signal is the proxy's ``ConcurrentRequests``: requests in progress, sampled every second,
  averaged over each minute (the proxy's embedded-metric-format fleet line; ``Average`` over the
  tasks' lines is the mean per task). It rises with anything that makes requests last, slow
  clients, a slow network, a slow S3, which CPU does not see.

Target tracking scales out when either policy asks and in only when both agree. Both targets
leave the same margin, about 1.6x the average before the limit: the default CPU target of
60 % of the vCPU, and 40 requests in progress against the pool's 64. That is the growth the
load may have while a scale-out is on its way: three one-minute datapoints above the target,
then the new task's start.

Not the load balancer's ``RequestCountPerTarget``: a manifest HEAD and a 1 GB layer count the
same, and with the internet-facing load balancer on, each target group sees only its share.
Not the fetch slots (``InFlightFetches``): they fill only with cold content, whose limit is the
upstream's and the NAT's bandwidth, which more tasks do not widen.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_ecs as ecs

from registry_proxy_infra.config import ProxyStackConfig

# The proxy's S3 connection pool (proxy/storage/s3.py, max_pool_connections; a test keeps them
# equal): blob downloads one task serves at once before the next ones wait.
S3_POOL_CONNECTIONS = 64
# The margin both targets leave below their limit (the CPU target's default: 60 % of the vCPU).
MARGIN = 1.6
# Requests in progress per task that the service aims for: the pool less the margin.
CONCURRENT_REQUESTS_PER_TASK = int(S3_POOL_CONNECTIONS / MARGIN)
SIGNAL_METRIC = "ConcurrentRequests"
# The proxy writes its lines every PROXY_CLOUDWATCH_INTERVAL (60 s): one datum per task a minute.
SIGNAL_PERIOD = Duration.minutes(1)
SCALE_OUT_COOLDOWN = Duration.minutes(1)
SCALE_IN_COOLDOWN = Duration.minutes(5)
# One event loop uses one vCPU at most; task CPU units per vCPU.
CPU_UNITS_PER_VCPU = 1024


def concurrency_metric(namespace: str) -> cw.Metric:
    """The scaling signal for slow clients: requests in progress, averaged over the tasks."""
    return cw.Metric(
        namespace=namespace,
        metric_name=SIGNAL_METRIC,
        statistic="Average",
        period=SIGNAL_PERIOD,
    )


def cpu_target_percent(config: ProxyStackConfig) -> int:
    """``cpuTargetPercent`` of one vCPU, as a percentage of the task's CPU (what ECS reports)."""
    vcpus = max(1, config.cpu // CPU_UNITS_PER_VCPU)
    return max(1, round(config.cpu_target_percent / vcpus))


class ServiceScaling:
    """The service's task count, ``minTasks`` to ``maxTasks``, held by target tracking.

    Built on the service's own scalable target (the construct id it has always had)."""

    def __init__(
        self, service: ecs.FargateService, *, config: ProxyStackConfig, namespace: str
    ) -> None:
        self.task_count = service.auto_scale_task_count(
            min_capacity=config.min_tasks, max_capacity=config.max_tasks
        )
        self.signal = concurrency_metric(namespace)
        self.task_count.scale_to_track_custom_metric(
            "ConcurrencyScaling",
            metric=self.signal,
            target_value=CONCURRENT_REQUESTS_PER_TASK,
            scale_in_cooldown=SCALE_IN_COOLDOWN,
            scale_out_cooldown=SCALE_OUT_COOLDOWN,
        )
        self.task_count.scale_on_cpu_utilization(
            "CpuScaling",
            target_utilization_percent=cpu_target_percent(config),
            scale_in_cooldown=SCALE_IN_COOLDOWN,
            scale_out_cooldown=SCALE_OUT_COOLDOWN,
        )
