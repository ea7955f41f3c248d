"""List the sdist and the wheel in DIST and check what they ship.

Both must carry the migrations, the templates, the static files and py.typed;
neither may carry tests/, example_project/ or bench/ (nor a top-level package
other than django_dyrygent in the wheel). Exits non-zero naming what is wrong.

    python .ci/check_dist.py DIST
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from pathlib import Path

REQUIRED = (
    "django_dyrygent/__init__.py",
    "django_dyrygent/py.typed",
    "django_dyrygent/migrations/__init__.py",
    "django_dyrygent/migrations/0001_initial.py",
    "django_dyrygent/templates/django_dyrygent/dag.svg",
    "django_dyrygent/templates/admin/django_dyrygent/workflow/change_form.html",
    "django_dyrygent/static/django_dyrygent/dag.css",
    "django_dyrygent/static/django_dyrygent/dag.js",
    "django_dyrygent/management/commands/dyrygent_run.py",
)
FORBIDDEN_DIRS = ("tests", "example_project", "bench", ".ci")


def sdist_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        # Drop the "django_dyrygent-0.1.0/" prefix.
        return [m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name and m.isfile()]


def wheel_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as whl:
        return [n for n in whl.namelist() if not n.endswith("/")]


def problems(kind: str, names: list[str]) -> list[str]:
    found = set(names)
    out = [f"{kind}: missing {name}" for name in REQUIRED if name not in found]
    out += [f"{kind}: ships {name}" for name in names if name.split("/", 1)[0] in FORBIDDEN_DIRS]
    if kind == "wheel":
        tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
        out += [f"wheel: unexpected top-level {top}" for top in sorted(tops - {"django_dyrygent"})]
    return out


def main(dist: Path) -> int:
    sdists, wheels = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        print(f"expected one sdist and one wheel in {dist}, found {sdists + wheels}", file=sys.stderr)
        return 1
    errors = []
    for kind, path, names in (("sdist", sdists[0], sdist_names(sdists[0])),
                              ("wheel", wheels[0], wheel_names(wheels[0]))):
        print(f"== {path.name} ({len(names)} files)")
        print("\n".join(f"   {name}" for name in sorted(names)))
        errors += problems(kind, names)
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    print("distribution contents: " + ("FAILED" if errors else "ok"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
