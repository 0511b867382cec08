"""How the service scales: on the requests each task is serving at once.

The signal is the proxy's own ``ConcurrentRequests`` (its embedded-metric-format fleet line: the
client requests one task served at once over the last report interval; CloudWatch's ``Average``
over the tasks' lines is the average per task).  Not CPU, and not the load balancer's
``RequestCountPerTarget``, for reasons in the code:

- the proxy is one process with one event loop (threads only for disk reads and writes), so it
  can use one vCPU whatever the task's size: with ``cpu=2048`` the service's average CPU stays
  near 50 % at saturation, and a 60 % target would never scale out;
- requests differ by orders of magnitude (a manifest HEAD against a 1 GB layer), so a count of
  requests says little about load, while time spent serving them does;
- with the internet-facing load balancer on, the tasks sit in two target groups and each
  group's ``RequestCountPerTarget`` sees only its share of the traffic; the proxy sees all.

CPU stays as a second policy, against the one vCPU the event loop can use, for an image that
does not report the signal yet: target tracking scales out when any policy asks and in only
when all agree.

``CONCURRENT_REQUESTS_PER_TASK`` is the one figure to set from the capacity measurement
(``make bench``, docs/benchmarks.md): the concurrency at which one task's latency starts to
climb, less a margin.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_ecs as ecs

from registry_proxy_infra.config import ProxyStackConfig

# Requests in flight per task that the service aims for. Provisional: the capacity measurement
# of issue 19 sets it.
CONCURRENT_REQUESTS_PER_TASK = 40
SIGNAL_METRIC = "ConcurrentRequests"
# The proxy writes its lines every PROXY_CLOUDWATCH_INTERVAL (60 s): one datum per task a minute.
SIGNAL_PERIOD = Duration.minutes(1)
SCALE_OUT_COOLDOWN = Duration.minutes(1)
SCALE_IN_COOLDOWN = Duration.minutes(5)
# One event loop uses one vCPU at most; task CPU units per vCPU.
CPU_UNITS_PER_VCPU = 1024


def concurrency_metric(namespace: str) -> cw.Metric:
    """The scaling signal: requests served at once, averaged over the tasks."""
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
