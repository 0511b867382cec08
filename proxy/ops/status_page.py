"""The status page: one HTML document rendered here from the ``/status`` figures.

No build step and no external asset (it must work offline, inside a VPC): the styles and a few
lines of script are inline, allowed by a Content-Security-Policy that names their hashes, and the
chart is inline SVG. The script re-fetches the page's main part (``?fragment=1``) every few
seconds and swaps it in; the same renderer draws both, so there is one way a figure is formatted.
Every figure sits in a box of fixed size, so a refresh never shifts the layout.

Everything taken from requests (repository names, references) is escaped. The figures are read
from ``/status``'s document by their keys, never with a default: a key the document does not
have fails the page's tests instead of showing a default figure (a cap read from the wrong key
once said "no size cap set" under a cap). Only what instances publish as they like (a rate-limit
reading, a download, an event) is read leniently.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterable
from html import escape
from typing import Any

from proxy.config_values import NO_SIZE, human_bytes

REFRESH_SECONDS = 5
NO_VALUE = NO_SIZE  # an en dash: a figure not known (yet)
CHART_MINUTES = 6 * 60
CHART_BUCKET_MINUTES = 10

_STYLE = """
:root { color-scheme: light dark; --fg: #1b1f24; --muted: #5a6470; --line: #d0d7de;
  --card: #f6f8fa; --accent: #0a66c2; --warn: #b35900; --bad: #c62828; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --muted: #9aa6b2; --line: #30363d;
  --card: #161b22; --accent: #58a6ff; --warn: #d29922; --bad: #f85149; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: Canvas; }
header { display: flex; flex-wrap: wrap; gap: .5rem 1.5rem; align-items: baseline;
  padding: 1rem 1.25rem; border-bottom: 1px solid var(--line); }
header h1 { font-size: 1.25rem; margin: 0; }
header p { margin: 0; color: var(--muted); overflow-wrap: anywhere; min-width: 0; }
main { display: grid; gap: 1rem; padding: 1rem 1.25rem;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, 22rem), 1fr)); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: .9rem 1rem; min-width: 0; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 1rem; margin: 0 0 .6rem; }
dl { display: grid; grid-template-columns: repeat(auto-fill, minmax(9rem, 1fr));
  gap: .6rem 1rem; margin: 0; }
dt { color: var(--muted); font-size: .8rem; }
dd { margin: 0; font-size: 1.35rem; font-variant-numeric: tabular-nums; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; }
.note { color: var(--muted); font-size: .8rem; margin: .5rem 0 0; }
.warn { color: var(--warn); } .bad { color: var(--bad); }
svg.chart { display: block; width: 100%; height: 110px; margin-top: .6rem; }
svg.chart rect.bar { fill: var(--accent); } svg.chart line { stroke: var(--line); }
svg.chart text { fill: var(--muted); font-size: 10px; }
table { width: 100%; border-collapse: collapse; font-size: .85rem; table-layout: fixed; }
th, td { text-align: left; padding: .3rem .4rem; border-bottom: 1px solid var(--line);
  overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
th { color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
progress { width: 100%; height: .8rem; }
col.when { width: 5.5rem; } col.what { width: 45%; }
td.why { white-space: normal; overflow-wrap: anywhere; }
.empty { color: var(--muted); margin: 0; }
"""

_SCRIPT = """
(function () {
  var main = document.getElementById("figures");
  var stamp = document.getElementById("refreshed");
  function refresh() {
    fetch("?fragment=1", {cache: "no-store", credentials: "same-origin"})
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        main.innerHTML = html;
        stamp.textContent = "updated " + new Date().toLocaleTimeString();
        stamp.className = "";
      })
      .catch(function () { stamp.textContent = "not updating: the proxy did not answer";
        stamp.className = "bad"; });
  }
  setInterval(refresh, REFRESH_MS);
})();
""".replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; "
        f"style-src {_csp_hash(_STYLE)}; script-src {_csp_hash(_SCRIPT)}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# --- formatting for people ----------------------------------------------------------------------


def human_count(count: float | None) -> str:
    if count is None:
        return NO_VALUE
    return f"{int(count):,}".replace(",", "\u202f")  # a narrow space groups thousands


def ago(moment: float | None, now: float) -> str:
    """``3 min ago``."""
    if moment is None:
        return "never"
    seconds = max(0.0, now - moment)
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{int(seconds)} s ago"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 2 * 86400:
        return f"{int(seconds // 3600)} h ago"
    return f"{int(seconds // 86400)} days ago"


def percent(ratio: float | None) -> str:
    return NO_VALUE if ratio is None else f"{ratio * 100:.1f} %"


# --- the page -----------------------------------------------------------------------------------


def render_page(status: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    fleet = status["fleet"]
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>registry-proxy status</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
  <h1>registry-proxy</h1>
  <p>{fleet["instances"]} instance{"s" if fleet["instances"] != 1 else ""} ·
     storage {escape(str(status["storage"]))} ·
     <span id="refreshed">updated {time.strftime("%H:%M:%S", time.localtime(now))}</span></p>
</header>
<main id="figures">
{render_fragment(status, now)}
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def render_fragment(status: dict[str, Any], now: float | None = None) -> str:
    """The refreshable part of the page (everything under the header)."""
    now = time.time() if now is None else now
    fleet = status["fleet"]
    mine = status["upstreams"]  # this instance's: whom it pulls as
    parts = [
        _quota(name, figures, now, mine[name]["account"] if name in mine else None)
        for name, figures in sorted(fleet["upstreams"].items())
    ]
    if not parts:
        parts.append(
            '<section aria-labelledby="quota"><h2 id="quota">Upstream quota</h2>'
            '<p class="empty">No upstream request yet.</p></section>'
        )
    parts += [
        _cache(status, fleet),
        _now(fleet, status),
        _repositories(fleet),
        _events("Last stale serves", "stale", fleet["recent_stale"], now, _stale_row),
        _events("Last upstream errors", "errors", fleet["recent_errors"], now, _error_row),
        _instances(status, now),
    ]
    if not fleet["complete"]:
        parts.append(
            '<section class="wide"><p class="warn">The other instances could not be read from '
            "the cache storage: these figures are this instance's only.</p></section>"
        )
    return "\n".join(parts)


def _figure(label: str, value: str, *, klass: str = "") -> str:
    attribute = f' class="{klass}"' if klass else ""
    return f"<div><dt>{escape(label)}</dt><dd{attribute}>{escape(value)}</dd></div>"


def _quota(upstream: str, figures: dict[str, Any], now: float, account: str | None) -> str:
    """``account``: whom this instance pulls from ``upstream`` as (a user name, "anonymous"),
    from /status; None for an upstream this instance has no client for (no figure then)."""
    reading = figures["ratelimit"] or {}  # a reading as an instance published it
    remaining, limit = reading.get("remaining"), reading.get("limit")
    low = remaining is not None and limit and remaining < max(1, limit // 10)
    window = reading.get("window")
    ident = "quota-" + hashlib.sha256(upstream.encode()).hexdigest()[:8]
    note = (
        f"Read {ago(reading.get('at'), now)}"
        + (f" from {escape(str(reading.get('source')))}" if reading.get("source") else "")
        + (f"; window {int(window) // 3600} h" if window and window >= 3600 else "")
        + "."
        if reading
        else "The upstream has not reported a rate limit (none, or no counted pull yet)."
    )
    return f"""<section aria-labelledby="{ident}">
<h2 id="{ident}">Upstream quota: {escape(upstream)}</h2>
<dl>
{_figure("Pulls as", account) if account is not None else ""}
{_figure("Pulls remaining", human_count(remaining), klass="bad" if low else "")}
{_figure("Limit per window", human_count(limit))}
{_figure("Counted pulls (fleet)", human_count(figures["counted_pulls"]))}
{_figure("Upstream errors", human_count(figures["errors"]))}
</dl>
<p class="note">{note}</p>
{_chart(figures["pulls_by_minute"], now)}
</section>"""


def _chart(pulls_by_minute: dict[str, int], now: float) -> str:
    """Counted pulls per 10 minutes over the last 6 hours, as an inline SVG bar chart."""
    buckets = CHART_MINUTES // CHART_BUCKET_MINUTES
    last_bucket = int(now // 60) // CHART_BUCKET_MINUTES
    counts = [0] * buckets
    for minute, count in pulls_by_minute.items():
        index = buckets - 1 - (last_bucket - int(minute) // CHART_BUCKET_MINUTES)
        if 0 <= index < buckets:
            counts[index] += int(count)
    peak = max(counts)
    width, height, bar = 360, 100, 360 / buckets
    bars = "".join(
        f'<rect class="bar" x="{i * bar + 1:.1f}" y="{height - 14 - h:.1f}" '
        f'width="{bar - 2:.1f}" height="{h:.1f}"><title>{c} pulls</title></rect>'
        for i, c in enumerate(counts)
        if c
        for h in [max(1.0, (height - 20) * c / peak)]
    )
    label = (
        f"Counted pulls per {CHART_BUCKET_MINUTES} minutes over the last "
        f"{CHART_MINUTES // 60} hours: {sum(counts)} in all, at most {peak} in "
        f"{CHART_BUCKET_MINUTES} minutes."
    )
    return f"""<svg class="chart" viewBox="0 0 {width} {height}" preserveAspectRatio="none"
 role="img" aria-label="{escape(label)}"><title>{escape(label)}</title>
<line x1="0" y1="{height - 14}" x2="{width}" y2="{height - 14}"/>{bars}
<text x="0" y="{height - 2}">{CHART_MINUTES // 60} h ago</text>
<text x="{width}" y="{height - 2}" text-anchor="end">now</text></svg>"""


def _cache(status: dict[str, Any], fleet: dict[str, Any]) -> str:
    cache = status["cache"]
    size, cap = cache["bytes"], cache["limit_bytes"]
    size_text = human_bytes(size) if size is not None else "not measured"
    cap_text = f"of {human_bytes(cap)}" if cap else "(no size cap set)"
    bar = (
        f'<progress max="{int(cap)}" value="{int(min(size, cap))}" '
        f'aria-label="Cache size: {escape(size_text)} {escape(cap_text)}"></progress>'
        if size is not None and cap
        else ""
    )
    return f"""<section aria-labelledby="cache">
<h2 id="cache">Cache</h2>
<dl>
{_figure("Hit ratio", percent(fleet["hit_ratio"]))}
{_figure("Served from cache", human_bytes(fleet["bytes_from_cache"]))}
{_figure("Fetched from upstream", human_bytes(fleet["bytes_from_upstream"]))}
{_figure("Cache size", size_text)}
</dl>
<p class="note">Cache size {escape(size_text)} {escape(cap_text)}.</p>{bar}
</section>"""


def _now(fleet: dict[str, Any], status: dict[str, Any]) -> str:
    downloads = fleet["downloads"]
    rows = []
    for download in downloads[:20]:
        size, done = download.get("size"), int(download.get("bytes") or 0)
        name = escape(str(download.get("repository") or "?"))
        digest = escape(str(download.get("digest", ""))[7:19])
        label = f"{name} {digest}: {human_bytes(done)}" + (
            f" of {human_bytes(size)}" if size else ""
        )
        progress = (
            f'<progress max="{int(size)}" value="{min(done, int(size))}" '
            f'aria-label="{escape(label)}"></progress>'
            if size
            else f'<progress aria-label="{escape(label)}"></progress>'
        )
        rows.append(
            f'<tr><td>{name}</td><td class="num">{escape(human_bytes(done))}'
            f"{' / ' + escape(human_bytes(size)) if size else ''}</td><td>{progress}</td></tr>"
        )
    table = (
        '<table><thead><tr><th scope="col">Repository</th><th scope="col" class="num">Bytes'
        '</th><th scope="col">Progress</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
        if rows
        else '<p class="empty">No download in progress.</p>'
    )
    return f"""<section aria-labelledby="now">
<h2 id="now">Right now</h2>
<dl>
{_figure("Downloads in flight", human_count(len(downloads)))}
{_figure("Stale serves", human_count(fleet["stale"]))}
{_figure("Storage errors", human_count(status["storage_errors"]))}
</dl>
{table}
</section>"""


def _repositories(fleet: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr><td>{escape(entry["repository"])}</td><td class="num">'
        f"{human_count(entry['pulls'])}</td></tr>"
        for entry in fleet["repositories"]
    )
    body = (
        '<table><thead><tr><th scope="col">Repository</th><th scope="col" class="num">Pulls</th>'
        f"</tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else '<p class="empty">No pull yet.</p>'
    )
    return f"""<section aria-labelledby="repositories">
<h2 id="repositories">Most pulled repositories</h2>
{body}
<p class="note">Manifest requests by tag, since each instance started.</p>
</section>"""


def _stale_row(event: dict[str, Any], now: float) -> tuple[str, ...]:
    why = str(event.get("why") or "")
    reason = why.split('"', 1)[-1].rstrip('"') if '"' in why else why
    return (
        ago(event.get("at"), now),
        f"{event.get('repository')}:{event.get('reference')}",
        reason.removeprefix("served from cache: "),
    )


def _error_row(event: dict[str, Any], now: float) -> tuple[str, ...]:
    return (
        ago(event.get("at"), now),
        f"{event.get('upstream')} {event.get('method')}",
        f"answered {event.get('status')}" if event.get("status") != "error" else "no answer",
    )


def _events(
    title: str,
    ident: str,
    events: Iterable[dict[str, Any]],
    now: float,
    row: Callable[[dict[str, Any], float], tuple[str, ...]],
) -> str:
    lines = []
    for event in list(events)[:10]:
        when, what, why = row(event, now)
        lines.append(
            f"<tr><td>{escape(when)}</td><td>{escape(what)}</td>"
            f'<td class="why">{escape(why)}</td></tr>'
        )
    body = (
        '<table><colgroup><col class="when"><col class="what"><col></colgroup>'
        '<thead><tr><th scope="col">When</th><th scope="col">What</th>'
        f'<th scope="col">Why</th></tr></thead><tbody>{"".join(lines)}</tbody></table>'
        if lines
        else '<p class="empty">None.</p>'
    )
    return f"""<section aria-labelledby="{ident}">
<h2 id="{ident}">{escape(title)}</h2>
{body}
</section>"""


def _instances(status: dict[str, Any], now: float) -> str:
    rows = "".join(
        f"<tr><td>{escape(str(i['instance']))}"
        f"{' (this one)' if i['instance'] == status['instance'] else ''}</td>"
        f"<td>{escape(ago(i['published_at'], now))}</td>"
        f'<td class="num">{human_count(i["counted_pulls"])}</td>'
        f'<td class="num">{human_count(i["hits"])}</td>'
        f'<td class="num">{human_count(i["downloads"])}</td></tr>'
        for i in status["instances"]
    )
    return f"""<section class="wide" aria-labelledby="instances">
<h2 id="instances">Instances</h2>
<table><thead><tr><th scope="col">Instance</th><th scope="col">Reported</th>
<th scope="col" class="num">Counted pulls</th><th scope="col" class="num">Hits</th>
<th scope="col" class="num">Downloads</th></tr></thead><tbody>{rows}</tbody></table>
<p class="note">Each instance reports every {int(status["fleet"]["publish_interval"])} s;
one that stops reporting drops out after a few intervals.</p>
</section>"""
