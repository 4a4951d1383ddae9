"""Tables (Markdown + LaTeX), results.json and RESULTS.md."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path


def pct(value, std=None, digits=2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{100 * value:.{digits}f}"
    if std is not None and isinstance(std, float) and math.isfinite(std):
        text += f" ± {100 * std:.{digits}f}"
    return text


def num(value, fmt="{:.4f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)


@dataclass
class Table:
    name: str
    caption: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"**{self.caption}**", "",
                 "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        esc = latex_escape
        spec = "l" + "r" * (len(self.columns) - 1)
        lines = ["\\begin{table}[t]", "\\centering", f"\\caption{{{esc(self.caption)}}}",
                 f"\\label{{tab:{self.name}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
                 " & ".join(esc(c) for c in self.columns) + " \\\\", "\\midrule"]
        lines += [" & ".join(esc(str(c)) for c in row) + " \\\\" for row in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
        if self.notes:
            lines += ["\\\\[2pt]", "{\\footnotesize " + esc(" ".join(self.notes)) + "}"]
        lines += ["\\end{table}"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> None:
        tables = Path(out_dir) / "tables"
        tables.mkdir(parents=True, exist_ok=True)
        (tables / f"{self.name}.md").write_text(self.markdown())
        (tables / f"{self.name}.tex").write_text(self.latex())


def latex_escape(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "±": r"$\pm$", "≤": r"$\leq$", "·": r"$\cdot$"}
    return "".join(repl.get(ch, ch) for ch in text)


def _clean(obj):
    """JSON-able, with NaN/inf as null and numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(_clean(data), indent=1, sort_keys=True) + "\n")


# The other systems (spectral_editing.py, selfie.py, neuron_topics.py, ...) each write their own part of
# RESULTS.md to results/<system>.md under the output folder; statistic_analysis.py appends every one it
# finds, in this order (unknown names after, alphabetically), so RESULTS.md gathers all of them.
SYSTEM_ORDER = ("id_refusal", "same_genre", "spectral_editing", "selfie", "neuron_topics")


def section_path(out_dir, system: str) -> Path:
    return Path(out_dir) / "results" / f"{system}.md"


def write_section(out_dir, system: str, markdown: str) -> Path:
    """Write (atomically) one system's section of RESULTS.md: a '## ...' heading, tables, figures."""
    path = section_path(out_dir, system)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(markdown.rstrip() + "\n")
    partial.replace(path)
    return path


def system_sections(out_dir) -> list[str]:
    """The gathered part of RESULTS.md: a marker line, then every results/<system>.md in SYSTEM_ORDER."""
    folder = Path(out_dir) / "results"
    found = {p.stem: p for p in folder.glob("*.md")} if folder.is_dir() else {}
    order = [n for n in SYSTEM_ORDER if n in found] + sorted(n for n in found if n not in SYSTEM_ORDER)
    return [GATHERED + "\n"] + [found[n].read_text().rstrip() + "\n" for n in order]


# RESULTS.md's own part ends at this line; what follows it is gathered from results/*.md and can be
# gathered again (statistic_analysis.py --gather) after another system rewrote its section.
GATHERED = "<!-- the other systems' sections, gathered from results/*.md (statistic_analysis.py --gather) -->"


def regather(out_dir) -> Path:
    """Rewrite the gathered part of ``out_dir``/RESULTS.md from the current results/*.md, keeping its own part."""
    from cli import UserError
    path = Path(out_dir) / "RESULTS.md"
    text = path.read_text() if path.is_file() else ""
    if GATHERED not in text:
        raise UserError(f"{path} has no gathered part to refresh ({'missing' if not text else 'an older layout'}): "
                        "run statistic_analysis.py without --gather first")
    own = text[:text.index(GATHERED)].rstrip("\n") + "\n"
    partial = path.with_name(path.name + ".partial")
    partial.write_text("\n".join([own] + system_sections(out_dir)))
    partial.replace(path)
    return path


def paste_between_markers(path, tag: str, text: str) -> None:
    """Replace what stands between ``<!-- tag:begin -->`` and ``<!-- tag:end -->`` in a Markdown file (a
    README's tables generated by a run); a UserError naming the markers when either is missing.

    Written to a side file and renamed, so that an interrupted paste never leaves half a README.
    """
    from cli import UserError
    path = Path(path)
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    content = path.read_text()
    if begin not in content or end not in content:
        raise UserError(f"{path} has no {begin} ... {end} section to update: put the two markers back, or run "
                        "without --update-readme")
    head, rest = content.split(begin, 1)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{rest.split(end, 1)[1]}")
    partial.replace(path)


def git_commit() -> str:
    """The repository's short commit, "(with uncommitted changes)" when tracked files differ; "unknown"
    outside git. What a run's generated tables name as their code."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha or "unknown") + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    import platform
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
