"""A sweep's report: its points collected from the run folders into tables, the fits, plots and report of each mode
(`scaling.report`), the two modes side by side where both were measured, and an index (`sweep.md`).

    summary = report_sweep(plan, out_dir=None, partial=False)

Layout under `out_dir` (default `<sweep out_dir>/report`): `points.csv`, `points.json`, `fits.json`, `report.md` and
`<metric>.png` for a one-mode sweep; the same per mode under `separate/` and `along/` plus `modes.md` for `both`;
`sweep.md` and `sweep.json` (sizes, teachers' compute, run states) in every case.

Points that are missing or failed are in the tables with their reason and never fitted. Unless `partial`, their
presence, or a mode that cannot be fitted at all, ends the report with a `UserError` (one line, exit code 2) after
everything is written.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import numpy as np

from ect_scale.runtime.errors import UserError
from ect_scale.scaling.collect import RunState, collect_points, nominal_flops, run_state, teacher_flops
from ect_scale.scaling.markdown import fmt
from ect_scale.scaling.plan import Plan, network_stats
from ect_scale.scaling.points import Point, write_table
from ect_scale.scaling.report import analyse, write_report

MAX_NAMED = 4  # Missing points named in the one-line error; the rest are counted.


def report_sweep(plan: Plan, out_dir: Optional[str] = None, partial: bool = False) -> dict[str, Any]:
    """Collect, fit and write everything (see the module docstring); returns the summary written to sweep.json."""
    out_dir = out_dir or os.path.join(plan.sweep.out_dir, "report")
    states = {r.index: run_state(plan, r) for r in plan.runs}
    modes = list(plan.points)
    points = {mode: collect_points(plan, mode, states) for mode in modes}
    summary: dict[str, Any] = {
        "sweep": plan.sweep.description,
        "mode": plan.sweep.mode,
        "out_dir": out_dir,
        "sizes": sizes_table(plan, states),
        "runs": {
            s: sum(st.status == s for st in states.values()) for s in ("done", "partial", "failed", "new", "unmeasured")
        },
        "modes": {},
    }
    errors: list[str] = []
    for mode in modes:
        folder = out_dir if len(modes) == 1 else os.path.join(out_dir, mode)
        summary["modes"][mode] = entry = {"folder": folder, "n_points": len(points[mode])}
        write_table(points[mode], os.path.join(folder, "points.csv"), os.path.join(folder, "points.json"))
        try:
            analysis = analyse(
                points[mode],
                predict_at_flops=plan.sweep.report.predict_at_flops,
                n_boot=plan.sweep.report.n_boot,
                method=plan.sweep.report.method,
            )
        except UserError as exc:
            entry["error"] = str(exc)
            errors.append(f"{mode}: {exc.what}")
            continue
        entry["files"] = write_report(analysis, folder)
        entry["exponents"] = exponents(analysis)
    if len(modes) == 2:
        summary["modes_md"] = os.path.join(out_dir, "modes.md")
        with open(summary["modes_md"], "w") as f:
            f.write(modes_markdown(plan, points, summary))
    with open(os.path.join(out_dir, "sweep.json"), "w") as f:
        json.dump(summary, f, indent=1, default=_json_default)
        f.write("\n")
    with open(os.path.join(out_dir, "sweep.md"), "w") as f:
        f.write(index_markdown(plan, summary, points))
    bad = [p for mode in modes for p in points[mode] if p.status != "ok"]
    if bad and not partial:
        raise UserError(missing_line(bad, sum(len(v) for v in points.values())), _missing_fix(out_dir))
    if errors and not partial:
        raise UserError(
            f"the report could not fit every mode ({'; '.join(errors)})",
            "finish more points and report again, or pass --partial to keep what could be fitted",
        )
    return summary


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def missing_line(bad: list[Point], total: int) -> str:
    named = "; ".join(f"{p.label()}: {p.status}, {p.reason}" for p in bad[:MAX_NAMED])
    more = f"; and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
    return f"{len(bad)} of {total} points are missing or failed and were not fitted ({named}{more})"


def _missing_fix(out_dir: str) -> str:
    return (
        f"their reasons are in {out_dir}/sweep.md; re-run `tools/scaling.py <sweep> run` to train what is missing "
        "(finished points are skipped), or pass --partial to accept the report without them"
    )


def sizes_table(plan: Plan, states: dict[int, RunState]) -> list[dict[str, Any]]:
    """Per size: preset, parameters, forward FLOPs per image, training FLOPs per image, and the teacher's own
    training FLOPs (reported alongside, never added to the points' compute)."""
    teachers = teacher_flops(plan, states)
    rows = []
    for size in plan.sweep.sizes:
        run = plan.runs_of(size.name)[0]
        rows.append(
            {
                "size": size.name,
                "preset": size.preset,
                "params": run.params,
                "fwd_flops": float(network_stats(run.cfg.network)["fwd_flops"]),
                "train_flops_per_img": nominal_flops(run, 1),
                "teacher": size.init,
                "teacher_train_flops": teachers[size.name],
            }
        )
    return rows


def exponents(analysis: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """metric -> size -> {form, b, ci, r2_log, held-out largest-budget error} of the chosen fits."""
    out: dict[str, dict[str, Any]] = {}
    for metric, data in analysis["metrics"].items():
        for size, d in data["sizes"].items():
            if not d["fitted"]:
                continue
            fit = d["fits"][d["chosen"]]
            hold = d.get("holdout_largest", {})
            out.setdefault(metric, {})[size] = {
                "form": d["chosen"],
                "b": fit["params"]["b"],
                "e": fit["params"]["e"],
                "ci_b": fit["ci"]["b"],
                "r2_log": fit["r2_log"],
                "holdout_rel_error": hold.get("rel_error"),
                "seed_noise_rel": d["seed_noise"]["pooled_rel_std"],
            }
    return out


def geomeans(points: list[Point], metric: str) -> dict[tuple[str, int], float]:
    """(size, budget) -> geometric mean over seeds of the ok values."""
    groups: dict[tuple[str, int], list[float]] = {}
    for p in points:
        v = p.value(metric)
        if v is not None:
            groups.setdefault((p.size, p.budget_nimg), []).append(v)
    return {k: float(np.exp(np.mean(np.log(v)))) for k, v in groups.items()}


def modes_markdown(plan: Plan, points: dict[str, list[Point]], summary: dict[str, Any]) -> str:
    """Both modes side by side: per metric, size and budget, the seed geometric means and along / separate."""
    lines = [
        "# Separate runs vs evaluations along one run",
        "",
        "`separate`: one run per budget, ECT's stages scaled to that budget. `along`: the run of the largest budget "
        "(stages scaled to it), evaluated when it reaches each budget. The largest budget is the same run in both. "
        "Values are geometric means over seeds.",
    ]
    for metric in plan.metrics:
        sep, alo = geomeans(points["separate"], metric), geomeans(points["along"], metric)
        lines += [
            "",
            f"## {metric}",
            "",
            "| size | budget (img) | separate | along | along / separate |",
            "|---|---|---|---|---|",
        ]
        for size in plan.sweep.sizes:
            for b in plan.sweep.budgets:
                s, a = sep.get((size.name, b)), alo.get((size.name, b))
                ratio = fmt(a / s) if s and a else "—"
                lines.append(f"| {size.name} | {b:,} | {fmt(s)} | {fmt(a)} | {ratio} |")
        lines += ["", "Fitted exponents b (chosen form, 95 % CI):", ""]
        for mode in ("separate", "along"):
            ex = summary["modes"][mode].get("exponents", {}).get(metric, {})
            parts = [
                f"{s} {fmt(e['b'])} [{fmt(e['ci_b'][0])}, {fmt(e['ci_b'][1])}] ({e['form']})" for s, e in ex.items()
            ]
            lines.append(f"- {mode}: " + ("; ".join(parts) if parts else "not fitted"))
    return "\n".join(lines) + "\n"


def index_markdown(plan: Plan, summary: dict[str, Any], points: dict[str, list[Point]]) -> str:
    """sweep.md: what was measured, the sizes and their teachers, the runs' states, links to each mode's report."""
    sw = plan.sweep
    lines = [
        f"# Scaling sweep: {sw.description or sw.out_dir}",
        "",
        f"Mode `{sw.mode}`; {len(sw.sizes)} sizes × {len(sw.seeds)} seeds × {len(sw.budgets)} budgets "
        f"({', '.join(f'{b:,}' for b in sw.budgets)} images); recipe `{sw.recipe}`; EMA `{plan.ema}`; "
        f"ECT stages per run: {sw.stages if sw.stages is not None else 'the recipe’s stage_nimg'}.",
        "",
        "| size | preset | parameters | FLOPs / image (forward) | training FLOPs / image | teacher | "
        "teacher's training FLOPs (not added) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary["sizes"]:
        lines.append(
            f"| {r['size']} | {r['preset']} | {r['params']:,} | {fmt(r['fwd_flops'])} | "
            f"{fmt(r['train_flops_per_img'])} | {r['teacher'] or 'random init'} | {fmt(r['teacher_train_flops'])} |"
        )
    runs = summary["runs"]
    lines += ["", "Runs: " + ", ".join(f"{n} {s}" for s, n in runs.items() if n) + f" (of {len(plan.runs)}).", ""]
    for mode, entry in summary["modes"].items():
        rel = os.path.relpath(entry["folder"], summary["out_dir"])
        n_ok = sum(p.status == "ok" for p in points[mode])
        where = f"[{rel}/report.md]({rel}/report.md)" if rel != "." else "[report.md](report.md)"
        status = f"error: {entry['error']}" if "error" in entry else where
        lines.append(f"- **{mode}**: {n_ok} of {entry['n_points']} points measured; {status}")
    if "modes_md" in summary:
        lines.append("- both modes side by side: [modes.md](modes.md)")
    bad = [(mode, p) for mode in points for p in points[mode] if p.status != "ok"]
    if bad:
        lines += ["", "## Missing and failed points", "", "| mode | point | status | reason |", "|---|---|---|---|"]
        lines += [f"| {m} | {p.label()} | {p.status} | {p.reason} |" for m, p in bad]
    return "\n".join(lines) + "\n"
