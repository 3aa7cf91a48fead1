"""The conda env files pin exactly the versions the venv installs (requirements*.txt)."""
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*(?:--no-deps\s+)?([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_env_files_agree_with_requirements():
    required = pins((REPO / "requirements.txt").read_text().splitlines())
    required.update(pins((REPO / "requirements-nodeps.txt").read_text().splitlines()))
    envs = sorted((REPO / "envs").glob("*.yaml"))
    assert envs, "no env files"
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
        env_pins = pins(pip)
        assert env_pins, f"{env.name} pins nothing"
        for name, version in env_pins.items():
            assert name in required, f"{env.name}: {name} is not in requirements.txt"
            assert required[name] == version, f"{env.name}: {name}=={version}, requirements say {required[name]}"


def test_every_rule_with_a_script_names_its_env():
    text = "\n".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    rules = re.findall(r"^rule (\w+):", text, flags=re.M)
    for block in re.split(r"^rule ", text, flags=re.M)[1:]:
        name = block.split(":")[0]
        if "script:" in block:
            assert "conda:" in block, f"rule {name} has a script but no conda: env"
    assert rules
