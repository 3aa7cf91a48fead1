"""Imported at start-up by every Python process whose PYTHONPATH holds this folder (the
workflow tests put it there): a rule's script may import only what its declared conda env
installs. ``TUMORMAP_ENVCHECK`` names a JSON file {script file name: [blocked top-level modules]}
written by tests/envcheck_map.py; Snakemake runs a rule's script as .snakemake/scripts/tmpXXXX.<name>.py.
"""
import json
import os
import sys


def _install() -> None:
    table_path = os.environ.get("TUMORMAP_ENVCHECK")
    if not table_path or not sys.argv or not sys.argv[0]:
        return
    script = os.path.basename(sys.argv[0])
    with open(table_path) as fh:
        table = json.load(fh)
    for name, entry in table.items():
        if script.endswith("." + name) or script == name:
            break
    else:
        return
    blocked, env = set(entry["blocked"]), entry["env"]

    import importlib.machinery

    class Blocked:
        """Loader whose import fails: the module 'exists' for probes (importlib.util.find_spec,
        as torch does for optional packages), but importing it fails as if it were absent."""

        def __init__(self, fullname):
            self.fullname = fullname

        def create_module(self, spec):
            raise ImportError(f"workflow_scripts/{name} imports {self.fullname}, which its rule's conda env "
                              f"{env} does not install", name=self.fullname)

        def exec_module(self, module):  # never reached
            raise ImportError(self.fullname)

    class EnvBlocker:
        def find_spec(self, fullname, path=None, target=None):
            if fullname.partition(".")[0] in blocked:
                return importlib.machinery.ModuleSpec(fullname, Blocked(fullname))
            return None

    sys.meta_path.insert(0, EnvBlocker())


_install()
