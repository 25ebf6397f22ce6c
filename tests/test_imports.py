"""The fetch actors' code must not import torch or transformers.

Every fetch actor is its own process; loading torch there costs about 1.5 s of CPU
and a few hundred MB per actor for nothing, since only the scorer runs the model.
"""

from __future__ import annotations

import subprocess
import sys


def test_fetch_stage_imports_no_model_libraries():
    probe = "import sys, tis_ray.fetch_stage; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def _modules_loaded_by(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(sorted({{'torch', 'transformers', 'ray'}} & set(sys.modules)))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()


def test_the_command_line_and_its_help_import_no_torch_transformers_or_ray():
    # `tis-ray --help` exits through SystemExit after printing; what it imported is what matters.
    help_run = "import tis_ray.cli\ntry:\n    tis_ray.cli.main(['--help'])\nexcept SystemExit:\n    pass"
    assert _modules_loaded_by(help_run)[-1] == "[]"
    assert _modules_loaded_by("import tis_ray.cli")[-1] == "[]"


def test_the_package_imports_light_and_every_public_name_resolves():
    import tis_ray

    assert _modules_loaded_by("import tis_ray")[-1] == "[]"
    missing = [name for name in tis_ray.__all__ if getattr(tis_ray, name, None) is None]
    assert missing == []
    assert issubclass(tis_ray.OutputError, tis_ray.InputError)
    assert issubclass(tis_ray.ModelLoadError, tis_ray.TisRayError)


def test_no_submodule_hides_a_public_name():
    """A submodule named like a lazy public name would replace it once imported
    (``from tis_ray import retry_errors`` gave the module, not the function)."""
    import types

    import tis_ray
    import tis_ray.api
    import tis_ray.session  # noqa: F401 - imported for their side effect on the package

    assert [name for name in tis_ray.__all__ if isinstance(getattr(tis_ray, name), types.ModuleType)] == []
