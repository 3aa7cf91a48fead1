"""Which top-level modules each workflow script must not import: those of the distributions
that some envs/*.yaml install and its own rule's env neither installs nor needs (transitively)."""
from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[=<>!~\[; ]", req.replace("--no-deps", "").strip(), maxsplit=1)[0].lower().replace("_", "-")


def env_distributions(env_file: Path) -> set[str]:
    spec = yaml.safe_load(env_file.read_text())
    pips = [d for dep in spec["dependencies"] if isinstance(dep, dict) for d in dep.get("pip", [])]
    return {_name(p) for p in pips if not p.strip().startswith("-e")}


def with_requirements(names: set[str]) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in reqs if "extra ==" not in r]
    return seen


def top_level_modules(dist: str) -> set[str]:
    mapping = metadata.packages_distributions()
    return {mod for mod, dists in mapping.items() if dist in {d.lower().replace("_", "-") for d in dists}}


def rule_scripts() -> dict[str, str]:
    """workflow script file name → its rule's env file name."""
    out = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            env = re.search(r'conda:\s*\n\s*"\.\./envs/([\w.-]+)"', block)
            script = re.search(r'script:\s*\n\s*"\.\./workflow_scripts/([\w.-]+)"', block)
            if env and script:
                out[script.group(1)] = env.group(1)
    return out


def blocked_modules() -> dict[str, dict]:
    envs = {f.name: env_distributions(f) for f in (REPO / "envs").glob("*.yaml")}
    everything = set().union(*envs.values())
    table = {}
    runner = with_requirements({"snakemake"})  # the script preamble imports Snakemake from its own install
    for script, env in rule_scripts().items():
        allowed = with_requirements(envs[env]) | runner
        blocked = set().union(*(top_level_modules(d) for d in everything - allowed)) - {"tumormap"}
        table[script] = {"env": f"envs/{env}", "blocked": sorted(blocked)}
    return table


def write_map(path: Path) -> Path:
    path.write_text(json.dumps(blocked_modules(), indent=1))
    return path
