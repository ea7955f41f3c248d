"""Real servers and workers for the fault suite, each started and stopped by pid, every wait bounded.

* ``Postgres``: a private cluster (initdb) on a free loopback port; stop,
  start, restart and ``pg_terminate_backend`` without touching the machine's
  own server. initdb refuses root, so as root the cluster runs as a system
  user (``dyrygent-pg``, created when missing).
* ``Redis``: a private ``redis-server`` on a free port, no persistence.
* ``Worker``: ``celery worker`` (prefork) as a subprocess in its own process
  group, with the example project's production-like settings (PostgreSQL,
  Redis broker, the django-db result backend, CELERY_DB_REUSE_MAX=1000) and
  liveness switched on; it can be killed whole, child by child, or sent
  SIGTERM like systemd does.
* ``runs(label)``: how many times a body of ``tests/reliability/tasks.py`` ran
  (one file per execution, written by the task itself, so counting needs no
  database).
"""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PG_USER = "dyrygent-pg"
# The queue the test process publishes to (tests/settings.py: CELERY_TASK_DEFAULT_QUEUE).
QUEUE = os.environ.get("DYRYGENT_TEST_QUEUE", "dyrygent-tests")
#: Liveness settings of the suite's workers: seconds, short so the suite stays fast.
FAST = {
    "DYRYGENT_HEARTBEAT_INTERVAL": "1",
    "DYRYGENT_WORKER_TIMEOUT": "6",
    "DYRYGENT_SWEEP_INTERVAL": "1",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, interval=0.2, what="condition"):
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


def pg_bin_dir():
    """The newest /usr/lib/postgresql/<version>/bin with initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()])
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing_binaries():
    """Why the fault suite cannot run here, or None."""
    if pg_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH"
    if shutil.which("redis-server") is None:
        return "redis-server not found in PATH"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb cannot run as root"
    return None


def stop_process(proc, sig=signal.SIGTERM, timeout=20):
    """Stop a process started with ``start_new_session`` (its whole group); SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


class Postgres:
    """A throw-away PostgreSQL cluster in ``base``, on a free loopback port."""

    def __init__(self, base):
        self.bin = pg_bin_dir()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            # The cluster runs as PG_USER, who must reach its directory: the suite's own
            # directory may sit under a root-only one (CI's `mktemp -d`), so use a fresh one.
            base = tempfile.mkdtemp(prefix="dyrygent-pg-")
        self.base = Path(base)
        self.data = self.base / "pgdata"
        self.port = free_port()
        self.log = self.base / "postgres.log"

    def _run(self, *args, timeout=60, check=True):
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            command = ["runuser", "-u", PG_USER, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=check)

    def init(self):
        if self.as_root:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                PG_USER], check=True, timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)
        self.base.mkdir(parents=True)
        if self.as_root:
            shutil.chown(self.base, PG_USER, PG_USER)
            os.chmod(self.base, 0o755)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", timeout=120)
        return self

    def start(self):
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data}"
                   " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start",
                  timeout=90)

    def stop(self, mode="fast"):
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", timeout=90, check=False)

    def restart(self):
        self.stop()
        self.start()

    def url(self, name):
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def sql(self, statement, database="postgres"):
        return self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                         "-At", "-c", statement, timeout=30).stdout

    def terminate_backends(self, database):
        """``pg_terminate_backend`` every other connection to ``database``; returns how many."""
        out = self.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        return int(out.strip() or 0)


class Redis:
    """A private redis-server (no persistence) on a free loopback port."""

    def __init__(self, base):
        self.base = Path(base)
        self.port = free_port()
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.base.mkdir(parents=True, exist_ok=True)
        log = open(self.base / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.base)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(self._ping, 20, what="redis-server accepting connections")

    def _ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        stop_process(self.proc)


def chain_workflow(name, *sigs):
    """An unsaved workflow running ``sigs`` one after another, and its nodes in that order."""
    from django_dyrygent.models import Workflow

    wf = Workflow(name=name)
    nodes, previous = [], None
    for sig in sigs:
        previous = wf.add_signature(sig, dependencies=[previous] if previous else None)
        nodes.append(previous)
    return wf, nodes


def runs_dir():
    return Path(os.environ["DYRYGENT_RELIABILITY_RUNS"])


def runs(label):
    """How many times a body with this label started (one file per execution)."""
    return len(glob.glob(str(runs_dir() / f"{label}.*.start")))


def ends(label):
    """How many bodies with this label ran to their end (``rel.run`` writes a ``.done`` file last)."""
    return len(glob.glob(str(runs_dir() / f"{label}.*.done")))


def run_pids(label):
    """Pids of the processes that ran bodies with this label (from their start files)."""
    return [int(Path(p).read_text() or 0) for p in glob.glob(str(runs_dir() / f"{label}.*.start"))]


class Worker:
    """A prefork Celery worker subprocess (own process group) against the suite's servers."""

    def __init__(self, base, name, database_url, broker_url, concurrency=2, env=None, include=(), root=ROOT):
        self.base = Path(base)
        self.name = name
        # The source tree it runs: another release's (tests/reliability/test_upgrade.py) comes first on the path.
        self.root = Path(root)
        self.log_path = self.base / f"worker-{name}.log"
        self.env = dict(
            os.environ, PYTHONPATH=str(self.root), DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url,
            CELERY_RESULT_BACKEND="django-db", CELERY_DB_REUSE_MAX="1000", DYRYGENT_LIVENESS="1",
            DYRYGENT_TEST_DIR=str(self.base / "worker-dir"), **(env if env is not None else FAST),
        )
        self.include = ["tests.reliability.tasks", *include]
        self.concurrency = concurrency
        self.proc = None

    @property
    def hostname(self):
        return f"{self.name}@{socket.gethostname()}"

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-P", "prefork",
             "-c", str(self.concurrency), "-Q", QUEUE, "-n", self.hostname, "--without-mingle",
             "--without-gossip", "--without-heartbeat", "-l", "warning", "-I", ",".join(self.include)],
            cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        return self

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self):
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill(self, sig=signal.SIGKILL, wait=20):
        """Send ``sig`` to the whole process group (main process and pool children)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        stop_process(self.proc, signal.SIGTERM, timeout=30)
