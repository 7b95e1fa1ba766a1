"""benchmarks/RESULTS.md from the groups' result files: one table per model, batch and group, with ratios to
the onnxruntime forward and speed-ups against the references (min-based and paired by round)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from configs import OURS


def _fmt_ms(s):
    if s is None:
        return "–"
    return f"{s * 1e3:,.0f}" if s >= 0.1 else f"{s * 1e3:.1f}" if s >= 0.01 else f"{s * 1e3:.2f}"


def _paired(a: dict, b: dict) -> float:
    """Median over the rounds of a's time / b's time in the same round: robust to the machine's speed
    drifting during a group, which moves both."""
    return statistics.median(x / y for x, y in zip(a["runs"], b["runs"]))


def write_report(path: Path, results: Path) -> str:
    """RESULTS.md from every group's JSON under ``results``/<machine>/, one section per machine, then the
    hand-written NOTES.md."""
    machines = sorted(d for d in results.iterdir() if d.is_dir() and any(d.glob("*.json")))
    if not machines:
        raise SystemExit("no results in benchmarks/results/<machine>/: run a group first")
    groups = {d: [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))] for d in machines}
    cuda = any(g[0]["machine"].get("device") == "cuda" for g in groups.values())
    devices = "CPU and CUDA" if cuda else "CPU"
    lines = [f"# Benchmarks: onnxattr vs. onnxruntime forward, Zennit, Captum and LXT ({devices})", "",
             "Made by `benchmarks/bench.py` (see its docstring and the README section *Benchmarks*). "
             "Times are wall-clock per call, min and median of the repeats after one warm-up round; "
             "all configurations of a group ran interleaved in one process. **× fwd** = min time / min "
             "time of the onnxruntime forward of the same group; **× fwd, paired** = the median over the "
             "rounds of the ratio within one round (each round runs every configuration once, so a drift "
             "of the shared machine's speed moves both sides); **speed-up vs ref** = the reference's min "
             "time / ours (above 1: onnxattr is faster), **paired** its per-round median. Memory: peak RSS "
             "of a fresh process that loads only what the configuration needs and runs it twice (torch "
             "processes include torch itself). One section per machine: ratios move with the CPU (a "
             "faster convolution leaves the element-wise part of a backward pass a larger share).", ""]
    for d in machines:
        lines += _machine_section(groups[d])
    notes = results / "NOTES.md"  # hand-written analysis, kept across regenerations
    if notes.exists():
        lines += ["", notes.read_text().rstrip()]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def _machine_section(groups: list[dict]) -> list[str]:
    m = groups[0]["machine"]
    if m.get("device") == "cuda":
        tf32 = m.get("torch_tf32", {})
        lines = [f"## {m.get('gpu')} (CUDA)", "",
                 f"- GPU: {m.get('gpu')}, {m.get('gpu_memory')}, driver {m.get('driver')}; onnxruntime's CUDA "
                 f"provider (onnxruntime-gpu, default options; providers built in: {m.get('onnxruntime_build')}); "
                 f"torch on CUDA {m.get('torch_cuda')} (TF32 in cuDNN convolutions: {tf32.get('cudnn')}, in "
                 f"matmul: {tf32.get('matmul')}, torch's defaults)",
                 "- every call takes its input from host memory and returns its outputs there (numpy for onnxruntime; "
                 "torch's calls end with torch.cuda.synchronize()); no peak-memory runs on the GPU"]
        return lines + _host_lines(m, groups) + _tables(groups)
    return [f"## {m.get('cpu')} ({m.get('simd', '')})", ""] + _host_lines(m, groups) + _tables(groups)


def _host_lines(m: dict, groups: list[dict]) -> list[str]:
    """The host, the threads and the library versions of a machine's section."""
    return [f"- CPU: {m.get('cpu')} ({m.get('simd', '')}), {m.get('cores')} cores visible; "
            f"threads used: {groups[0]['threads']} (onnxruntime intra_op_num_threads = torch.set_num_threads)",
            f"- {m.get('platform')}; Python {m.get('python')}",
            f"- onnxruntime {m.get('onnxruntime')}, onnx {m.get('onnx')}, numpy {m.get('numpy')}, "
            f"torch {m.get('torch')}, zennit {m.get('zennit')}, captum {m.get('captum')}"
            + next((f", lxt {g['machine']['lxt']} ({g['model']})" for g in groups
                    if "lxt" in g["machine"] and g.get("group") == "transformer"), ""), ""]


def _tables(groups: list[dict]) -> list[str]:
    lines = []
    header = ("| model | batch | configuration | min ms | median ms | × fwd | × fwd, paired | reference "
              "| speed-up vs ref | paired | peak RSS MiB | compile s |")
    for g in sorted(groups, key=lambda g: (g["model"], g["batch"], g["group"])):
        lines += [f"### {g['model']}, batch {g['batch']} ({g['group']}; {g['repeats']} repeats, "
                  f"load average before {g['machine'].get('load_before', 0):.2f})", "", header,
                  "|" + "---|" * 12]
        t = g["times"]
        fwd = t["ort.forward"]["min"]
        for c, v in t.items():
            lib, _, name = c.partition(".")
            refs = [r for r in OURS[name]["ref"] if r in t] if lib == "onnxattr" else []  # those that ran
            ref_txt = ", ".join(refs) or ""
            speed = ", ".join(f"{t[r]['min'] / v['min']:.2f}×" for r in refs)
            paired_speed = ", ".join(f"{_paired(t[r], v):.2f}×" for r in refs)
            lines.append(
                f"| {g['model']} | {g['batch']} | {c} | {_fmt_ms(v['min'])} | {_fmt_ms(v['median'])} | "
                f"{v['min'] / fwd:.2f} | {_paired(v, t['ort.forward']):.2f} | {ref_txt} | {speed} | {paired_speed} | "
                f"{g.get('memory', {}).get(c) and round(g['memory'][c]) or '–'} | "
                f"{g.get('compile', {}).get(name, '') and round(g['compile'][name], 2) if lib == 'onnxattr' else ''} |")
        lines.append("")
    return lines
