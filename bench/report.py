"""The printed report of bench/run.py: issue 9's target table, then the engine's own figures."""

from bench.cases import CD_RETRY_POLICY, CELERY_DYRYGENT, NATIVE, OURS, median, percentile
from bench.live import render_live

CONFIGS = (("default", "Celery's default DB handling"), ("reuse", "CELERY_DB_REUSE_MAX=1000"))


def _rows(report, config, case, system):
    """The runs of one case: the wide case ran on the 8-process workers (except in the smoke run)."""
    found = report.get(config + "-wide", {}).get(case) or report.get(config, {}).get(case) or {}
    return found.get(system, [])


def _seconds(rows):
    values = [r["seconds"] for r in rows if "seconds" in r]
    if values:
        return median(values)
    return None


def _fmt_s(rows, timeout=None):
    value = _seconds(rows)
    if value is None:
        if timeout and any(r.get("error") == "timeout" for r in rows):
            return f"> {timeout:.0f}s (timeout)"
        return "/".join(sorted({r.get("error", "?") for r in rows})) or "n/a"
    return f"{value:.3f}s"


def _ratio(a, b, timeout=None):
    """a / b; with a timed-out ``a``, the lower bound the timeout gives."""
    b = _seconds(b)
    if timeout and _seconds(a) is None and any(r.get("error") == "timeout" for r in a) and b:
        return f"> {timeout / b:.1f}x"
    a = _seconds(a)
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def _ms(value):
    return "n/a" if value is None else f"{value * 1000:.2f}"


def _table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    out = []
    for n, r in enumerate(rows):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _measured(rows):
    """Probe figures of the runs: finished ones, and what a timed-out run did before its timeout."""
    return [r if "seconds" in r else r["partial"] for r in rows if "seconds" in r or r.get("partial")]


def _pool(rows, key):
    return [v for r in rows if key in r for v in r[key]]


def _total(rows, key):
    return sum(r.get(key, 0) for r in rows)


def errors(report):
    found = []
    for config in ("default", "reuse", "default-wide", "reuse-wide"):
        for case, systems in report.get(config, {}).items():
            if not isinstance(systems, dict):
                continue
            for system, rows in systems.items():
                found.extend(f"{config} {case} {system}: {r['detail']}" for r in rows if "error" in r)
    for key in ("build", "huge"):
        part = report.get(key) or {}
        if "error" in part:
            found.append(f"{key}: {part['error']}")
        if part.get("state") == "timeout":
            found.append(f"{key}: still running after {part.get('run_seconds', 0):.0f}s (--huge-timeout); canceled")
        for sub in ("build", "admin"):
            if isinstance(part.get(sub), dict) and "error" in part[sub]:
                found.append(f"{key} {sub}: {part[sub]['error']}")
    return found


def render(report):
    m = report["machine"]
    runs = report.get("runs", 1)
    lines = [
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB; Python {m['python']}, "
        f"Celery {m['celery']}, Django {m['django']}, PostgreSQL {m['postgresql']}, "
        f"celery-dyrygent {m['celery_dyrygent']}; commit {m['commit']}"
        f"{' + uncommitted engine changes' if m.get('engine_dirty') else ''}"
        f"{'; SMOKE RUN (tiny sizes)' if report.get('smoke') else ''}"
        f"{f'; merged from {runs} runs' if runs > 1 else ''}",
        f"One prefork worker per configuration, all systems' tasks on one queue, Redis broker; "
        f"median of {report['reps']} runs ({report['big_reps']} for the large cases, "
        f"{report['cd_reps']} for celery-dyrygent, tick policy set_retry_policy{CD_RETRY_POLICY!r}: "
        "its floor); wall clock from building the workflow to seeing it done.",
        "ours(default) = Celery's default DB handling (connection closed around every task), on the same "
        "worker as native and celery-dyrygent; ours(reuse) = CELERY_DB_REUSE_MAX=1000.",
        "",
    ]
    table = [["case", "target", NATIVE, CELERY_DYRYGENT, "ours(default)", "/native", "/c-d",
              "ours(reuse)", "/native", "/c-d", "met (default, reuse)"]]
    for name, label, target, _nodes in report["cases"]:
        native = _rows(report, "default", name, NATIVE)
        cd = _rows(report, "default", name, CELERY_DYRYGENT)
        cells = [label, f"<= {target}x", _fmt_s(native), _fmt_s(cd) if cd else "not run"]
        met = []
        timeout = report.get("timeout")
        for config, _ in CONFIGS:
            ours = _rows(report, config, name, OURS)
            cells += [_fmt_s(ours, timeout), _ratio(ours, native, timeout),
                      _ratio(ours, cd, timeout) if cd else "n/a"]
            a, b = _seconds(ours), _seconds(native)
            if a is None and b and timeout and any(r.get("error") == "timeout" for r in ours):
                met.append("no" if timeout / b > target else "n/a")  # the timeout is a lower bound
            else:
                met.append("n/a" if a is None or not b else ("yes" if a / b <= target else "no"))
        table.append(cells + [", ".join(met)])
    lines += _table(table)
    lines += ["", "Engine figures of ours (PostgreSQL; worker probes, bench/probes.py):"]
    table = [["case", "worker", "stmts/plain node", "tick stmts", "locks/node", "lock held ms (mean, p99)",
              "lock wait ms (mean)", "release ms (p50, p99)", "wait() ms (p50, max)"]]
    for name, _label, _target, _nodes in report["cases"]:
        for config, _ in CONFIGS:
            runs = _rows(report, config, name, OURS)
            rows = _measured(runs)
            if not rows:
                continue
            shown = name + (" (timed out: partial)" if any("partial" in r for r in runs) else "")
            tasks = _total(rows, "noop_tasks")
            holds, waits = _pool(rows, "holds"), _pool(rows, "lockwaits")
            release, wake = _pool(rows, "release_latencies"), _pool(rows, "wait_latencies")
            table.append([
                shown, config,
                f"{_total(rows, 'noop_stmts') / tasks:.1f}" if tasks else "n/a",
                f"{_total(rows, 'tick_stmts') / len(rows):.0f}",
                f"{len(holds) / tasks:.2f}" if tasks else "n/a",
                f"{_ms(sum(holds) / len(holds) if holds else None)}, {_ms(percentile(holds, 99))}",
                _ms(sum(waits) / len(waits) if waits else None),
                f"{_ms(percentile(release, 50))}, {_ms(percentile(release, 99))}",
                f"{_ms(percentile(wake, 50))}, {_ms(max(wake) if wake else None)}",
            ])
    lines += _table(table)
    lines += ["", "Targets that are not ratios:"]
    lines += _other_targets(report)
    if report.get("query_times"):
        lines += ["", *_query_times(report["query_times"])]
    found = errors(report)
    if found:
        lines += ["", "Errors / timeouts:", *(f"  {e}" for e in found)]
    loads = [x for config in ("default", "reuse", "default-wide", "reuse-wide")
             for x in report.get(config, {}).get("loads", [])]
    lines += ["", f"Total run time: {report.get('total_seconds', 0):.0f}s"
              + (f"; 1-minute load average at the start of each case: {min(loads):.2f} to {max(loads):.2f} "
                 f"on {m['cpus']} CPUs (above ~{m['cpus'] / 2:.0f} others competed for the CPUs)" if loads else "")]
    return "\n".join(lines)


def _other_targets(report):
    out = []
    for config, what in CONFIGS:
        chain = [r for r in _rows(report, config, "chain", OURS) if "seconds" in r]
        tasks = _total(chain, "noop_tasks")
        if tasks:
            out.append(f"  SQL statements per plain task node, STARTED included ({what}, chain): "
                       f"{_total(chain, 'noop_stmts') / tasks:.1f} (target <= 3)")
        rows = [r for name, *_ in report["cases"] for r in _rows(report, config, name, OURS) if "seconds" in r]
        holds = _pool(rows, "holds")
        if holds:
            out.append(f"  workflow lock held per completion ({what}, all cases): mean {_ms(sum(holds) / len(holds))} "
                       f"ms, p50 {_ms(percentile(holds, 50))} ms, p99 {_ms(percentile(holds, 99))} ms "
                       "(target <= 0.5 ms; one-statement successes: the statement's whole time)")
        cnt = _pool(rows, "cntholds")
        if cnt:
            out.append(f"  counters row held by a one-statement success ({what}, all cases; lock to commit "
                       f"returned): mean {_ms(sum(cnt) / len(cnt))} ms, p50 {_ms(percentile(cnt, 50))} ms, "
                       f"p99 {_ms(percentile(cnt, 99))} ms")
        wake = _pool([r for r in rows if len(r.get("workflows", [])) == 1], "wait_latencies")
        if wake:
            out.append(f"  wait() after the commit that ends the workflow ({what}, one-workflow cases): "
                       f"p50 {_ms(percentile(wake, 50))} ms, max {_ms(max(wake))} ms (target <= 20 ms)")
        many = _pool(_measured(_rows(report, config, "many", OURS)), "release_latencies")
        if many:
            out.append(f"  dependency finished -> dependent published ({what}, many workflows): "
                       f"p50 {_ms(percentile(many, 50))} ms, p99 {_ms(percentile(many, 99))} ms")
    build = report.get("build")
    if build:
        out.append(
            f"  apply_async of {build['nodes']:,} nodes, build included: {build['seconds']:.3f}s (target <= 1 s)"
        )
    huge = report.get("huge")
    if huge:
        b, a = huge.get("build", {}), huge.get("admin", {})
        mb = 1024 * 1024
        out.append(
            f"  {huge['nodes']:,}-node workflow: build + apply_async {b.get('seconds', 0):.1f}s, peak "
            f"{b.get('peak_bytes', 0) / mb:.0f} MB; run {huge.get('state')} after {huge.get('run_seconds') or 0:.0f}s "
            f"({huge.get('nodes_done') or 0:,} task nodes done), "
            f"worker peak {huge.get('worker_peak_bytes', 0) / mb:.0f} MB per process; admin page "
            f"{a.get('page_seconds', 0):.2f}s (HTTP {a.get('page_status')}, {a.get('page_bytes', 0) / 1024:.0f} KB), "
            f"status JSON {a.get('status_seconds', 0):.2f}s, peak {a.get('peak_bytes', 0) / mb:.0f} MB"
        )
    if report.get("live"):
        out.extend(render_live(report["live"]))
    peaks = report.get("worker_peak_bytes") or {}
    if peaks:
        out.append("  worker pool peak memory per process: "
                   + ", ".join(f"{k} {v / 1024 / 1024:.0f} MB" for k, v in peaks.items()))
    return out


def _query_times(qt):
    total = sum(t for _sql, _c, t in qt)
    lines = [f"Where the reuse worker's SQL time goes (all its runs; {total:.2f}s in "
             f"{sum(c for _s, c, _t in qt)} statements):"]
    table = [["seconds", "share", "count", "ms each", "statement"]]
    for sql, count, seconds in qt[:14]:
        table.append([f"{seconds:.2f}", f"{seconds / total * 100:.0f}%", str(count),
                      f"{seconds / count * 1000:.2f}", sql[:80]])
    return lines + _table(table)
