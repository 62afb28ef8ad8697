"""The bench report: every bench/results/*.json rendered as Markdown plus PNG plots.

Generic first, so a scenario added later is never left out: every result's stated
targets (any `targets` list of `target()` records, wherever it sits) go into one
table, met or missed; every result gets a section naming its command, UTC time and
machine, with its top-level figures. Scenarios known here also get plots:
throughput and latency vs concurrency per path (scenario 1, throughput.json) and
RSS against uploads (scenario 2, uploads.json, read defensively: whatever keys
hold RSS are plotted by their place in the JSON). A scenario with no result file
is listed as missing, never skipped in silence.

    .venv/bin/python -m bench.report   # reads $BENCH_RESULTS or bench/results
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the backend is chosen

from bench._harness import RESULTS, SCENARIOS

TITLES = {
    "throughput": "1. Small uploads: gateway vs direct vs LiteLLM",
    "uploads": "2. Upload sizes: MB/s and RSS",
    "failover": "3. Failover",
    "scheduling": "4. Fleet scheduling",
    "formats": "5. Streaming and formats",
    "cp_scale": "6. Control-plane scale",
    "backend_rtf": "7. CPU backend real-time factor",
    "crash": "Backend crash under load",
    "reconciler_push": "Reconciler debounce",
    "vllm_real": "10. Real vLLM: RTF, failover, mixed fleet, load signals",
    "long_audio": "11. Long audio split across the fleet: speed-up, first event, splitter memory",
    "vllm_long_audio": "12. Past real vLLM's 600 s: a file vLLM refuses, served split",
    "vllm_scheduling": "13. Fleet scheduling on a mixed fleet: real vLLM beside a CPU backend",
}
PATH_STYLE = {"direct": ("k", "o"), "gateway": ("C0", "s"), "litellm": ("C3", "^")}


def load_results(results: Path) -> dict[str, Any]:
    """Every result file by scenario name; an unreadable one is kept as its error."""
    out: dict[str, Any] = {}
    for f in sorted(results.glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            data = {"_error": f"{f.name}: {e}"}
        out[f.stem] = data if isinstance(data, dict) else {"_value": data}
    return out


def _is_target(x: Any) -> bool:
    return isinstance(x, dict) and "name" in x and "met" in x


def find_targets(data: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every target() record in a result, with where it sits (nested ones too)."""
    if isinstance(data, dict):
        for k, v in data.items():
            here = f"{where}.{k}" if where else k
            if isinstance(v, list) and v and all(_is_target(t) for t in v):
                for t in v:
                    yield here, t
            else:
                yield from find_targets(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            if not _is_target(v):
                yield from find_targets(v, f"{where}[{i}]")


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    text = str(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _cell(v: Any) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def provenance(data: dict[str, Any], name: str) -> list[str]:
    """Command, UTC time and machine, as the result file states them."""
    command = data.get("command") or f".venv/bin/python -m bench.{name} (assumed: not in the file)"
    machine = data.get("machine")
    if isinstance(machine, dict):
        mtext = ", ".join(f"{k} {_fmt(v)}" for k, v in machine.items() if k != "loadavg_after")
    else:
        cores = data.get("cores")
        mtext = f"cores {cores} (machine not recorded)" if cores else "not recorded"
    lines = [
        f"- command: `{command}`",
        f"- measured: {data.get('measured_at', 'time not recorded')} (UTC)",
        f"- machine: {mtext}",
    ]
    if data.get("smoke"):
        lines.append("- **smoke run** (tiny counts: proves the code runs, figures mean nothing)")
    return lines


def scalar_figures(data: Any, where: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Numbers and short strings near the top of a result, for its generic table."""
    if not isinstance(data, dict) or depth > 2:
        return
    for k, v in data.items():
        here = f"{where}.{k}" if where else k
        if k in ("machine", "targets", "measured_at", "command") or k.startswith("_"):
            continue
        if isinstance(v, bool | int | float):
            yield here, v
        elif isinstance(v, dict):
            yield from scalar_figures(v, here, depth + 1)


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| scenario | target | wanted | value | verdict |",
        "|---|---|---|---|---|",
    ]
    n = met = 0
    for name in _order(results):
        for where, t in find_targets(results[name]):
            n += 1
            met += bool(t.get("met"))
            label = t.get("name", "?") if where == "targets" else f"{where}: {t.get('name', '?')}"
            verdict = "met" if t.get("met") else "**MISSED**"
            lines.append(
                f"| {name} | {_cell(label)} | {_cell(t.get('target', '?'))} "
                f"| {_cell(t.get('value'))} | {verdict} |"
            )
    none = [n_ for n_ in _order(results) if not any(True for _ in find_targets(results[n_]))]
    head = [f"{met} of {n} targets met, {n - met} missed."]
    if none:
        head.append(f"No targets stated in: {', '.join(none)}.")
    return [" ".join(head), "", *lines]


def _order(results: dict[str, Any]) -> list[str]:
    known = [s for s in SCENARIOS if s in results]
    return known + sorted(s for s in results if s not in SCENARIOS)


def plot_throughput(data: dict[str, Any], plots: Path) -> list[str]:
    """Requests/s and p50/p99 vs concurrency, one line per path, per backend."""
    out: list[str] = []
    for backend, res in (data.get("results") or {}).items():
        by_c = res.get("by_concurrency") or {}
        levels = sorted(by_c, key=float)
        if not levels:
            continue
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for p in ("direct", "gateway", "litellm"):
            xs = [float(c) for c in levels if p in by_c[c]]
            if not xs:
                continue
            rows = [by_c[c][p] for c in levels if p in by_c[c]]
            colour, marker = PATH_STYLE.get(p, ("C7", "o"))
            kw: dict[str, Any] = {"color": colour, "marker": marker}
            ax1.plot(xs, [r.get("rps", math.nan) for r in rows], label=p, **kw)
            ax2.plot(xs, [r.get("p50_ms", math.nan) for r in rows], label=f"{p} p50", **kw)
            ax2.plot(xs, [r.get("p99_ms", math.nan) for r in rows], ls="--", label=f"{p} p99", **kw)
        for ax in (ax1, ax2):
            ax.set_xscale("log", base=2)
            ax.set_xticks([float(c) for c in levels], levels)
            ax.set_xlabel("concurrency (connections)")
            ax.grid(True, alpha=0.3)
        ax1.set_ylabel("requests/s")
        ax1.set_yscale("log")
        ax2.set_ylabel("latency (ms)")
        ax2.set_yscale("log")
        ax1.legend()
        ax2.legend(fontsize=7)
        fig.suptitle(f"Scenario 1, backend {backend}: {data.get('measured_at', '')}")
        fig.tight_layout()
        png = plots / f"throughput_{backend}.png"
        fig.savefig(png, dpi=90)
        plt.close(fig)
        out.append(png.name)
    return out


def throughput_tables(data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for k in ("load", "gateway", "peer"):
        if k in data:
            lines.append(f"- {k}: {data[k]}")
    for backend, res in (data.get("results") or {}).items():
        lines += [
            "",
            f"Backend `{backend}`: {res.get('cost', '')}",
            "",
            "| c | path | req/s | p50 ms | p99 ms | x direct req/s | x direct p99 | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c, row in sorted((res.get("by_concurrency") or {}).items(), key=lambda x: float(x[0])):
            for p in ("direct", "gateway", "litellm"):
                r = row.get(p)
                if not isinstance(r, dict):
                    continue
                errors = (r.get("non_2xx") or 0) + (r.get("socket_errors") or 0)
                lines.append(
                    f"| {c} | {p} | {_fmt(r.get('rps'))} | {_fmt(r.get('p50_ms'))} "
                    f"| {_fmt(r.get('p99_ms'))} | {_fmt(r.get('throughput_ratio', 1.0))} "
                    f"| {_fmt(r.get('p99_ratio', 1.0))} | {_fmt(errors)} |"
                )
    return lines


def rss_series(data: Any, where: str = "") -> Iterator[tuple[str, float]]:
    """Every number whose key names RSS (MB or KB), by its place in the JSON."""
    if isinstance(data, dict):
        for k, v in data.items():
            here = f"{where}.{k}" if where else str(k)
            if isinstance(v, int | float) and not isinstance(v, bool) and "rss" in k.lower():
                mb = v / 1024 if k.lower().endswith("_kb") else v
                if k.lower().endswith("_bytes"):
                    mb = v / 1e6
                yield here, float(mb)
            else:
                yield from rss_series(v, here)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from rss_series(v, f"{where}[{i}]")


def plot_rss(name: str, data: dict[str, Any], plots: Path) -> list[str]:
    """RSS against uploads: a bar per RSS figure the result holds, named by its place."""
    series = [(k, v) for k, v in rss_series(data) if math.isfinite(v)][:60]
    if not series:
        return []
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.25 * len(series) + 1)))
    labels = [k for k, _ in series]
    colours = ["C3" if "litellm" in k.lower() else "C0" for k in labels]
    ax.barh(range(len(series)), [v for _, v in series], color=colours)
    ax.set_yticks(range(len(series)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("RSS (MB; keys ending _kb or _bytes converted)")
    ax.set_title(f"{name}: RSS figures in the result (LiteLLM red) {data.get('measured_at', '')}")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    png = plots / f"{name}_rss.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return [png.name]


def _case_tables(data: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{path: {case: figures}} where a result holds that shape (uploads.json does)."""
    res = data.get("results")
    if not isinstance(res, dict):
        return {}
    return {
        path: {c: r for c, r in cases.items() if isinstance(r, dict)}
        for path, cases in res.items()
        if isinstance(cases, dict) and any(isinstance(r, dict) for r in cases.values())
    }


def _natural(text: str) -> list[Any]:
    """'5MB_c16' after '1MB_c1' and before '25MB_c1': numbers compare as numbers."""
    parts = re.findall(r"(\d+\.?\d*)|(\D+)", text)
    return [(0, float(t), "") if t else (1, 0.0, w) for t, w in parts]


def plot_uploads(name: str, data: dict[str, Any], plots: Path) -> list[str]:
    """Peak RSS, its growth and MB/s per upload case, grouped by path."""
    table = _case_tables(data)
    cases = sorted({c for rows in table.values() for c in rows}, key=_natural)
    panels = [
        (k, label)
        for k, label in (
            ("rss_peak_mb", "peak RSS (MiB)"),
            ("growth_mb", "RSS growth over idle (MiB)"),
            ("mb_per_s", "upload MB/s"),
        )
        if any(isinstance(r.get(k), int | float) for rows in table.values() for r in rows.values())
    ]
    if not cases or not panels:
        return plot_rss(name, data, plots)
    paths = list(table)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    width = 0.8 / max(1, len(paths))
    for ax, (k, label) in zip(axes[0], panels, strict=True):
        for i, p in enumerate(paths):
            ys = [table[p].get(c, {}).get(k) for c in cases]
            vals = [float(y) if isinstance(y, int | float) else math.nan for y in ys]
            colour = PATH_STYLE.get(p, ("C7", "o"))[0]
            ax.bar([x + i * width for x in range(len(cases))], vals, width, label=p, color=colour)
        ax.set_xticks([x + width * (len(paths) - 1) / 2 for x in range(len(cases))], cases)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"{name}: per upload case (size_concurrency) {data.get('measured_at', '')}")
    fig.tight_layout()
    png = plots / f"{name}.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return [png.name]


def section(name: str, data: dict[str, Any], plots: Path) -> list[str]:
    lines = [f"## {TITLES.get(name, name)} (`{name}.json`)", ""]
    if "_error" in data:
        return [*lines, f"Unreadable: {data['_error']}", ""]
    lines += provenance(data, name)
    pngs: list[str] = []
    try:
        if name == "throughput":
            lines += ["", *throughput_tables(data)]
            pngs += plot_throughput(data, plots)
        if name == "uploads":
            pngs += plot_uploads(name, data, plots)
        elif name != "throughput" and any(True for _ in rss_series(data)):
            pngs += plot_rss(name, data, plots)
    except Exception as e:  # a plot must never hide the rest of the report
        lines.append(f"- plot failed: {e!r}")
    ts = list(find_targets(data))
    if ts:
        lines += ["", "| target | wanted | value | verdict |", "|---|---|---|---|"]
        for _, t in ts:
            verdict = "met" if t.get("met") else "**MISSED**"
            lines.append(
                f"| {_cell(t.get('name'))} | {_cell(t.get('target'))} "
                f"| {_cell(t.get('value'))} | {verdict} |"
            )
    else:
        lines += ["", "No targets stated by this scenario."]
    figures = list(scalar_figures(data))[:40]
    if figures and name != "throughput":
        lines += ["", "| figure | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in figures]
    lines += [""] + [f"![{p}](plots/{p})" for p in pngs] + [""]
    return lines


def write_report(results_dir: Path = RESULTS) -> Path:
    results = load_results(results_dir)
    run_log = results.pop("run_all", None)
    plots = results_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.png"):  # every plot is this function's own: none outlives its data
        stale.unlink()
    missing = [s for s in SCENARIOS if s not in results]
    lines = [
        "# Bench report",
        "",
        "Written by `.venv/bin/python -m bench.report` from the result files beside it; "
        "every figure below was measured by the command named in its section, at the "
        "UTC time and on the machine stated there. Ratios are against a baseline "
        "measured in the same run.",
        "",
    ]
    if missing:
        lines += [f"Missing scenarios (no result file): {', '.join(missing)}.", ""]
    if isinstance(run_log, dict) and isinstance(run_log.get("runs"), list):
        lines += ["## This run (bench.run_all)", "", *provenance(run_log, "run_all"), ""]
        lines += ["| module | status | wall s |", "|---|---|---|"]
        for r in run_log["runs"]:
            if isinstance(r, dict):
                lines.append(f"| {r.get('module')} | {r.get('status')} | {_fmt(r.get('wall_s'))} |")
        lines += ["", f"Total {_fmt(run_log.get('wall_s'))} s.", ""]
    lines += ["## Every target", "", *targets_table(results), ""]
    for name in _order(results):
        lines += section(name, results[name], plots)
    path = results_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    path = write_report()
    print(f"written : {path}")


if __name__ == "__main__":
    main()
