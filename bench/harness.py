"""The benchmark's processes and services: the worker subprocess, the database, Redis, the machine."""

import os
import platform
import resource
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEMORY_CAP = 4 * 1024**3  # bytes of address space per process, worker and native client alike
QUEUE = "dyrygent-bench"


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def database_url():
    return os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/dy_bench")


def recreate_postgres_database(url):
    """Drop and create the benchmark's database: a run never measures an old schema or old rows."""
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    with psycopg.connect(
        host=cfg["HOST"], port=cfg["PORT"] or 5432, user=cfg["USER"],
        password=cfg["PASSWORD"] or None, dbname="postgres", autocommit=True,
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{cfg["NAME"]}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{cfg["NAME"]}"')


def setup_django():
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


def flush_redis():
    """Empty the benchmark's own Redis databases (broker, results and probes)."""
    import redis
    from django.conf import settings

    for url in {settings.CELERY_BROKER_URL, settings.CELERY_RESULT_BACKEND}:
        if url and url.startswith("redis://"):
            redis.Redis.from_url(url).flushdb()


def limit_memory():
    """Cap this process's address space (children inherit it): a canvas blow-up fails, not the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def child_env(extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class Worker:
    """``celery worker -P prefork -c N`` in its own process group; stop() always kills it."""

    def __init__(self, logfile, env, concurrency):
        self.logfile = Path(logfile)
        self.env = env
        self.concurrency = concurrency
        self.proc = None

    def start(self):
        cmd = [
            sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "-P", "prefork",
            "-c", str(self.concurrency), "-Q", QUEUE, "-l", "WARNING", "--without-gossip",
            "--without-mingle", "--without-heartbeat", "-n", f"bench-{os.getpid()}@%h",
        ]
        with open(self.logfile, "w") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def check_alive(self):
        if self.proc.poll() is not None:
            tail = self.logfile.read_text()[-3000:]
            raise RuntimeError(f"The worker exited with code {self.proc.returncode}:\n{tail}")

    def children(self):
        """Process ids of the prefork pool (for py-spy and peak memory)."""
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], check=False, capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def peak_memory(self):
        """Largest peak resident size (VmHWM) of the pool processes, in bytes."""
        peaks = [0]
        for pid in self.children():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peaks.append(int(line.split()[1]) * 1024)
            except OSError:
                pass
        return max(peaks)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # setsid(): the worker leads its own group
        try:
            self.proc.send_signal(signal.SIGTERM)  # warm shutdown: unacked messages go back to the broker
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def machine():
    import celery
    import django

    try:
        from importlib.metadata import version

        cd_version = version("celery-dyrygent")
    except Exception:  # noqa: BLE001
        cd_version = "?"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), "?")
    except OSError:
        cpu = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "django": django.get_version(),
        "celery_dyrygent": cd_version,
        "postgresql": _postgres_version(),
        "platform": platform.platform(),
        "commit": git("rev-parse", "--short", "HEAD"),
        "engine_dirty": bool(git("status", "--porcelain", "--", "django_dyrygent")),
    }


def _postgres_version():
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            return cursor.fetchone()[0]
    except Exception:  # noqa: BLE001
        return "?"


def git(*args):
    try:
        return subprocess.run(
            ["git", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""
