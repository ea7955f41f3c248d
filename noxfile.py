"""The compatibility matrix: Python x Django x Celery x database x broker.

    nox -s ci            the slice CI runs: oldest versions on PostgreSQL + Redis,
                         newest on PostgreSQL + RabbitMQ
    nox -s matrix        every Django x Celery pair, Python, database x broker pair at
                         least once (6 cells, the run in docs/compatibility.md)
    nox -s matrix_report the Markdown table of the last run (docs/compatibility.md)
    nox -s tests         the whole cross product with every database and broker
    nox -s lint          ruff and mypy
    nox -l               every cell's name, to run one: nox -s "matrix(py3.12-dj5.2-celery5.x-postgres-redis)"

Services come from environment variables (defaults: the local ones, see
docs/compatibility.md): NOX_POSTGRES_URL, NOX_MYSQL_URL, NOX_REDIS_URL,
NOX_AMQP_URL, NOX_DB_PREFIX (database names), NOX_DIR (per-cell files),
NOX_CELL_TIMEOUT (seconds one cell's pytest may take). Arguments after ``--``
go to pytest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["ci"]

ROOT = Path(__file__).parent
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
# label -> (requirement, Pythons the release supports upstream)
DJANGO = {
    "4.2": ("Django>=4.2,<5.0", ("3.10", "3.11", "3.12")),
    "5.2": ("Django>=5.2,<6.0", PYTHONS),
    "6.x": ("Django>=6.0,<7.0", ("3.12", "3.13")),
}
CELERY = {"5.3": "celery>=5.3,<5.4", "5.x": "celery>=5.3,<6.0"}
DATABASES = ("sqlite", "postgres", "mariadb")
BROKERS = ("redis", "rabbitmq")
# Every database with every broker, for the full cross product (nox -s tests).
BACKENDS = [(db, broker) for db in DATABASES for broker in BROKERS]
# Scale tests: the same code paths as smaller tests, a minute per cell; `make test` runs them.
SCALE_TESTS = (
    "tests/worker/test_fanout.py::test_fanout__thousands_of_items",
    "tests/worker/test_e2e.py::test_large_workflow__ten_chained_groups_of_one_hundred_succeed",
)
#: The real-worker tests of the CI slice: a worker on each version, the whole engine, the admin in a browser.
CI_WORKER_TESTS = ("tests/worker/test_smoke.py", "tests/worker/test_e2e.py", "tests/worker/test_browser.py",
                   "tests/worker/test_pause.py", "tests/worker/test_waits.py")
NOX_DIR = Path(os.environ.get("NOX_DIR", Path(tempfile.gettempdir()) / "dyrygent-nox"))
VERSIONS_CODE = (
    "import json, sys, platform, django, celery, kombu, django_celery_results as r;"
    "json.dump({'python': platform.python_version(), 'django': django.__version__,"
    " 'celery': celery.__version__, 'kombu': kombu.__version__,"
    " 'django-celery-results': r.__version__}, open(sys.argv[1], 'w'))"
)


def _pyenv_on_path() -> None:
    """Put pyenv's interpreters on PATH, so ``python3.X`` resolves without ``pyenv global``."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = [sorted(versions.glob(f"{v}.*"), key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)])
             for v in PYTHONS]
    dirs = [str(matches[-1] / "bin") for matches in found if matches]
    if dirs:
        os.environ["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])


_pyenv_on_path()


@dataclass(frozen=True)
class Cell:
    python: str
    django: str
    celery: str
    database: str
    broker: str

    @property
    def id(self) -> str:
        return f"py{self.python}-dj{self.django}-celery{self.celery}-{self.database}-{self.broker}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.id.lower())

    def param(self) -> nox.param:
        return nox.param(self.python, self.django, self.celery, self.database, self.broker, id=self.id)


def supported(python: str, django: str, database: str) -> bool:
    """Whether a cell is one the package supports.

    Django 4.2 cannot open SQLite transactions IMMEDIATE (transaction_mode is
    Django 5.1+), so concurrent workers hit 'database is locked' (check W001):
    Django 4.2 is supported on PostgreSQL and MariaDB only.
    """
    return python in DJANGO[django][1] and not (django == "4.2" and database == "sqlite")


# A covering set, not the product: every Django x Celery pair, every Python,
# every database x broker pair, each at least once, in 6 cells (about 8 minutes
# each on a shared 2-CPU machine). The product is `nox -s tests` (96 cells).
MATRIX = [
    Cell("3.10", "4.2", "5.3", "postgres", "redis"),
    Cell("3.11", "4.2", "5.x", "mariadb", "rabbitmq"),
    Cell("3.10", "5.2", "5.3", "sqlite", "rabbitmq"),
    Cell("3.13", "5.2", "5.x", "mariadb", "redis"),
    Cell("3.12", "6.x", "5.3", "sqlite", "redis"),
    Cell("3.13", "6.x", "5.x", "postgres", "rabbitmq"),
]


def all_cells() -> list[Cell]:
    """The full cross product, less what the package does not support."""
    return [Cell(py, dj, cel, db, broker) for dj in DJANGO for cel in CELERY for py in PYTHONS
            for db, broker in BACKENDS if supported(py, dj, db)]


# The oldest and the newest supported versions; `make test` in CI covers the rest
# (its Python's newest Django and Celery on SQLite, PostgreSQL and MariaDB).
CI_CELLS = [MATRIX[0], MATRIX[-1]]
ARGS = "python,django,celery,database,broker"


def cell_env(cell: Cell, work: Path) -> dict[str, str]:
    prefix = os.environ.get("NOX_DB_PREFIX", "nox_dyrygent")
    env = {
        "DYRYGENT_TEST_DIR": str(work),
        "DYRYGENT_TEST_QUEUE": f"dyrygent-nox-{cell.slug}",
        # The fault suite (private servers, killed workers) tests the engine, not the
        # versions: `make test`'s PostgreSQL pass runs it; NOX_RELIABILITY=1 adds it here.
        "DYRYGENT_RELIABILITY": os.environ.get("NOX_RELIABILITY", "0"),
        "CELERY_BROKER_URL": {
            "redis": os.environ.get("NOX_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "rabbitmq": os.environ.get("NOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        }[cell.broker],
    }
    server = {
        "postgres": os.environ.get("NOX_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432"),
        "mariadb": os.environ.get("NOX_MYSQL_URL", "mysql://root@127.0.0.1:3306"),
    }.get(cell.database)
    if server:  # SQLite: tests/settings.py puts the file under DYRYGENT_TEST_DIR
        env["DATABASE_URL"] = f"{server}/{prefix}_{cell.slug}"
    return env


def run_cell(session: nox.Session, cell: Cell, pytest_args: tuple[str, ...] = ()) -> None:
    """Install the cell's versions, run the suite, record versions and counts for matrix_report."""
    work = NOX_DIR / cell.slug
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    extras = "test,mysql" if cell.database == "mariadb" else "test"
    started = time.monotonic()
    requirements = ["-e", f".[{extras}]", DJANGO[cell.django][0], CELERY[cell.celery]]
    if session.venv_backend == "uv":
        # The cell's Django wins over other packages' caps: django-celery-beat (the test
        # extra's beat scheduler, not a dependency of the package) declares Django < 6.1,
        # which would make the newest cells test 6.0 while setup.cfg allows 6.1.
        overrides = work / "overrides.txt"
        overrides.write_text(DJANGO[cell.django][0] + "\n")
        requirements = ["--override", str(overrides), *requirements]
    session.install(*requirements)
    session.run("python", "-c", VERSIONS_CODE, str(work / "versions.json"), silent=True)
    installed = time.monotonic()
    junit = work / "junit.xml"
    cmd = ["python", "-m", "pytest", "-q", "-rfEs", f"--junitxml={junit}", *pytest_args, *session.posargs]
    limit = os.environ.get("NOX_CELL_TIMEOUT", "1200")
    if shutil.which("timeout"):
        cmd = ["timeout", "--kill-after=30", limit, *cmd]
    try:
        session.run(*cmd, env=cell_env(cell, work), external=True)
    finally:
        counts = junit_counts(junit)
        counts.update(cell=cell.__dict__, install_seconds=round(installed - started),
                      test_seconds=round(time.monotonic() - installed))
        (work / "result.json").write_text(json.dumps(counts))


def junit_counts(junit: Path) -> dict[str, object]:
    """passed / failed / skipped from pytest's JUnit XML; no file means pytest never finished."""
    if not junit.exists():
        return {"finished": False}
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert suite is not None, junit
    total, failed = int(suite.get("tests", 0)), int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return {"finished": True, "passed": total - failed - skipped, "failed": failed, "skipped": skipped}


@nox.session
@nox.parametrize(ARGS, [cell.param() for cell in MATRIX])
def matrix(session: nox.Session, django: str, celery: str, database: str, broker: str) -> None:
    """One cell of the compatibility matrix (all cells: nox -s matrix)."""
    run_cell(session, Cell(session.python, django, celery, database, broker), deselect(SCALE_TESTS))


@nox.session
@nox.parametrize(ARGS, [cell.param() for cell in CI_CELLS])
def ci(session: nox.Session, django: str, celery: str, database: str, broker: str) -> None:
    """The slice CI runs: the oldest and the newest supported versions.

    Within CI's time budget: the tests without a worker (tests/unit), the
    celery-dyrygent door, and of the real-worker tests the smoke, end-to-end
    and browser ones. The rest of tests/worker and the fault suite run in
    CI's `make test` passes (SQLite, PostgreSQL, MariaDB) on the pinned
    versions; `nox -s matrix` runs everything on every cell.
    """
    run_cell(session, Cell(session.python, django, celery, database, broker),
             ("tests/unit", "tests/compat", *CI_WORKER_TESTS, *deselect(SCALE_TESTS)))


@nox.session
@nox.parametrize(ARGS, [cell.param() for cell in all_cells()])
def tests(session: nox.Session, django: str, celery: str, database: str, broker: str) -> None:
    """The whole suite on any cell of the full cross product."""
    run_cell(session, Cell(session.python, django, celery, database, broker))


def deselect(test_ids: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(arg for test_id in test_ids for arg in ("--deselect", test_id))


@nox.session(python=False)
def matrix_report(session: nox.Session) -> None:
    """Print the last run's results as the Markdown table of docs/compatibility.md."""
    rows = ["| cell | Python | Django | Celery | kombu | passed | failed | skipped | tests (s) |",
            "|---|---|---|---|---|---|---|---|---|"]
    failures = []
    for result in sorted(NOX_DIR.glob("*/result.json")):
        r = json.loads(result.read_text())
        versions_file = result.parent / "versions.json"
        v = json.loads(versions_file.read_text()) if versions_file.exists() else {}
        cell = r["cell"]
        name = f"{cell['database']} + {cell['broker']}"
        counts = (f"{r['passed']} | {r['failed']} | {r['skipped']}" if r["finished"]
                  else "not finished (timed out) | | ")
        rows.append(f"| {name} | {v.get('python', cell['python'])} | {v.get('django', '?')} "
                    f"| {v.get('celery', '?')} | {v.get('kombu', '?')} | {counts} | {r['test_seconds']} |")
        failures += [f"- {Cell(**cell).id}: `{test}`" for test in failed_tests(result.parent / "junit.xml")]
    print("\n".join(rows))
    if failures:
        print("\nFailed or errored tests:\n\n" + "\n".join(failures))


def failed_tests(junit: Path) -> list[str]:
    if not junit.exists():
        return []
    cases = ET.parse(junit).getroot().iter("testcase")
    return [f"{case.get('classname')}::{case.get('name')}" for case in cases
            if case.find("failure") is not None or case.find("error") is not None]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy, as `make lint` runs them."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("mypy")
