"""The capacity section's cost model and its report: the table docs/benchmarks.md shows.

:func:`cost_model` turns the calibration runs into CPU per manifest request, per request to S3
and per GB from S3, prices a pull of the measured image and of a few other sizes, and compares
with what the steps measured.  :func:`report` prints the steps as a table, writes it as
Markdown (``.bench/capacity.md``) and returns the run's failures.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .capacity_watch import PROXY_CORE, r
from .procstat import MB
from .text import table

CPU_TARGET = 60  # the stack's default cpuTargetPercent (infra/cdk.json)


# Images to price with the cost model: MB, layers (a small base, the measured one, a big one).
EXAMPLE_IMAGES = ((50, 3), (212, 6), (500, 8))


@dataclass(frozen=True)
class ImageFacts:
    bytes: int
    layers: int


def cost_model(
    calibration: Mapping[str, Any], steps: Sequence[Mapping[str, Any]], image: ImageFacts
) -> dict[str, Any]:
    """The proxy's CPU per manifest request, per blob request to S3 and per GB from S3 (the
    calibration runs), what a pull of the image costs by that model and as the steps measured
    it, and what one vCPU carries at that cost."""
    small, big = calibration["small blob GET from S3"], calibration["big blob GET from S3"]
    per_byte_ms = (big["cpu_ms_per_request"] - small["cpu_ms_per_request"]) / (
        big["bytes"] - small["bytes"]
    )
    per_blob_ms = max(0.0, small["cpu_ms_per_request"] - per_byte_ms * small["bytes"])
    manifest_ms = statistics.fmean(
        (
            calibration["manifest HEAD by tag"]["cpu_ms_per_request"],
            calibration["manifest GET by digest"]["cpu_ms_per_request"],
        )
    )
    # A pull: the tag, the platform manifest by digest, the config (from memory: counted as a
    # manifest request), and each layer from S3.
    predicted_ms = 3 * manifest_ms + image.layers * per_blob_ms + per_byte_ms * image.bytes
    measured = [s["proxy_cpu_s_per_pull"] for s in steps if s["proxy_cpu_s_per_pull"]]
    per_pull = statistics.median(measured) if measured else predicted_ms / 1000
    by_image = []
    for mb, layers in EXAMPLE_IMAGES:
        cost = (3 * manifest_ms + layers * per_blob_ms + per_byte_ms * mb * MB) / 1000
        by_image.append(
            {
                "image_mb": mb,
                "layers": layers,
                "cpu_s_per_pull": r(cost, 3),
                "pulls_per_s_per_vcpu": r(1 / cost, 1),
                "pulls_per_s_at_cpu_target": r(CPU_TARGET / 100 / cost, 1),
            }
        )
    return {
        "cpu_ms_per_manifest_request": r(manifest_ms, 3),
        "cpu_ms_per_blob_request": r(per_blob_ms, 3),
        "cpu_s_per_gb_from_s3": r(per_byte_ms * 1e9 / 1000, 3),
        "cpu_s_per_pull_predicted": r(predicted_ms / 1000, 3),
        "cpu_s_per_pull_measured": r(per_pull, 3) if measured else None,
        "pulls_per_s_per_vcpu": r(1 / per_pull, 2),
        "mb_per_s_per_vcpu": r(image.bytes / MB / per_pull),
        "manifest_requests_per_s_per_vcpu": round(1000 / manifest_ms) if manifest_ms else None,
        "by_image": by_image,
    }


def brief(figures: Mapping[str, Any]) -> str:
    keys = (
        "pulls_per_s", "mb_per_s", "wall_s", "pull_p50_s", "pull_p99_s", "waited",
        "first_byte_p50_s", "first_byte_max_s",
        "probe_manifest_p50_ms", "probe_manifest_p99_ms", "probe_lag_p99_ms",
        "probe_health_p99_ms", "manifest_p99_ms", "failed_pulls", "proxy_cpu_percent",
        "core_busy_percent", "moto_cpu_percent", "rss_max_mb", "in_progress_mean",
        "s3_connections_max", "fetches_max", "upstream_bytes_per_image_set", "saturated",
    )  # fmt: skip
    return ", ".join(f"{k} {figures[k]}" for k in keys if k in figures)


def step_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The steps, the slow clients and the cold burst as a table (docs/benchmarks.md's)."""
    header = [
        "step", "load 1 min before / after", "pulls/s", "MB/s", "pull p50 / p99 s",
        "manifest HEAD p50 / p99 ms", "layer HEAD p50 / p99 ms", "/healthz/local p99 / max ms",
        "errors", "proxy CPU %", "proxy CPU wait %", "test-bed core %", "RSS MB",
        "requests in progress", "S3 conns", "fetches", "saturated",
    ]  # fmt: skip
    rows = []
    slow, burst = result["slow_clients"], result["cold_burst"]
    for s in [*result["steps"], slow, burst]:
        cores = s["core_busy_percent"]
        bed = [v for k, v in cores.items() if str(k) != str(PROXY_CORE)]
        progress = s.get("in_progress_mean")
        rate: Any
        mb_per_s: Any
        if s is slow:
            name, rate = f"{s['clients']} slow ({s['rate']}/s)", f"{s['waited']} waited"
            mb_per_s = s["mb_per_s"]
            pulls = f"first byte {s['first_byte_p50_s']} / {s['first_byte_max_s']}"
        elif s is burst:
            name, rate = f"{s['clients']} cold", f"wall {s['wall_s']} s"
            mb_per_s = f"{s['upstream_bytes_per_image_set']}x upstream"
            pulls = f"{s['pull_p50_s']} / {s['pull_p99_s']}"
        else:
            name, rate, mb_per_s = f"{s['clients']} warm", s["pulls_per_s"], s["mb_per_s"]
            pulls = f"{s['pull_p50_s']} / {s['pull_p99_s']}"
        rows.append(
            [
                name,
                f"{s['load_before']} / {s['load_after']}",
                rate,
                mb_per_s,
                pulls,
                f"{s['probe_manifest_p50_ms']} / {s['probe_manifest_p99_ms']}",
                f"{s['probe_blob_p50_ms']} / {s['probe_blob_p99_ms']}",
                f"{s['probe_health_p99_ms']} / {s['probe_health_max_ms']}",
                s["failed_pulls"] + len(s["server_errors"]),
                s["proxy_cpu_percent"],
                s["cpu_wait_percent"],
                r(statistics.fmean(bed)) if bed else "",
                s["rss_max_mb"],
                "" if progress is None else f"{progress} (max {s['in_progress_max']})",
                s["s3_connections_max"],
                s["fetches_max"],
                "; ".join(s.get("saturated", [])) or "nothing",
            ]
        )
    return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def model_lines(result: Mapping[str, Any]) -> list[str]:
    model, cal = result["model"], result["calibration"]
    lines = [
        f"{name}: "
        + (f"{v['per_second']} req/s" if "per_second" in v else f"{v['mb_per_s']} MB/s")
        + f", proxy CPU {v['proxy_cpu_percent']} % (CPU wait {v['cpu_wait_percent']} %), "
        f"{v['cpu_ms_per_request']} CPU-ms per request; meanwhile /healthz/local p99 "
        f"{v['probe_health_p99_ms']} ms, a manifest HEAD p99 {v['probe_manifest_p99_ms']} ms"
        for name, v in cal.items()
    ]
    lines.append(
        f"cost model: {model['cpu_ms_per_manifest_request']} CPU-ms per manifest request, "
        f"{model['cpu_ms_per_blob_request']} CPU-ms per blob request to S3, "
        f"{model['cpu_s_per_gb_from_s3']} CPU-s per GB from S3; a pull of the image: "
        f"{model['cpu_s_per_pull_predicted']} CPU-s predicted, "
        f"{model['cpu_s_per_pull_measured']} measured in the steps (median)"
    )
    lines.append(
        f"one vCPU at 100 %: {model['pulls_per_s_per_vcpu']} pulls/s of the image, "
        f"{model['mb_per_s_per_vcpu']} MB/s, or {model['manifest_requests_per_s_per_vcpu']} "
        "manifest requests/s"
    )
    lines.append(
        f"by the model, pulls a second per vCPU at 100 % / at {CPU_TARGET} %: "
        + ", ".join(
            f"{x['image_mb']} MB in {x['layers']} layers {x['pulls_per_s_per_vcpu']} / "
            f"{x['pulls_per_s_at_cpu_target']}"
            for x in model["by_image"]
        )
    )
    docker = [(s["clients"], s["docker_pull_s"]) for s in result["steps"] if s["docker_pull_s"]]
    if docker:
        lines.append(
            "a docker pull during the step: "
            + ", ".join(f"{clients} clients {seconds} s" for clients, seconds in docker)
        )
    return lines


def report(result: Mapping[str, Any], results_dir: Path | None = None) -> list[str]:
    """Print the figures (and write them as Markdown); return the failed "musts"."""
    if "skipped" in result:
        print(f"\ncapacity: skipped: {result['skipped']}")
        return []
    failed = []
    burst = result["cold_burst"]
    for s in [*result["steps"], result["slow_clients"], burst]:
        if s["failed_pulls"] or s["server_errors"]:
            failed.append(
                f"capacity, {s['clients']} clients: {s['failed_pulls']} failed pulls, "
                f"{len(s['server_errors'])} 5xx: {(s['errors'] + s['server_errors'])[:3]}"
            )
    if burst["upstream_bytes_per_image_set"] > 1.05:
        failed.append(
            f"capacity, cold burst: the upstream sent {burst['upstream_bytes_per_image_set']}x "
            "the images"
        )
    config, task = result["config"], result["task"]
    header, rows = step_rows(result)
    title = (
        f"Capacity: one proxy on core {task['proxy_core']} (the task: cpu {task['cpu_units']}, "
        f"{task['memory_mib']} MiB, {task['environment']['PROXY_MAX_UPSTREAM_FETCHES']} "
        f"fetches), S3 on moto, warm pulls of a {config['image_mb']} MB image "
        f"({config['image_blobs']} blobs) by skopeo, {config['step_seconds']} s per step; "
        f"cold: {burst['clients']} clients, {burst['images']} new images of "
        f"{burst['image_mb']} MB through the WAN"
    )
    print(f"\n{title}")
    print(table(header, rows))
    lines = model_lines(result)
    for line in lines:
        print(line)
    for note in result["notes"]:
        print(f"capacity note: {note}")
    if results_dir is not None:
        results_dir.mkdir(exist_ok=True)
        text = "\n".join([title, "", markdown(header, rows), "", *(f"- {x}" for x in lines)])
        (results_dir / "capacity.md").write_text(text + "\n")
    return failed
