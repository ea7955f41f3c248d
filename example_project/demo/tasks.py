"""Demo tasks: each sleeps a little, as real work would, and returns JSON data."""

import time

from celery import shared_task


@shared_task(name="demo.fetch_inventory")
def fetch_inventory(hosts, delay=0.2):
    time.sleep(delay)
    return list(hosts)


@shared_task(name="demo.provision")
def provision(host, delay=0.2, fail=False):
    time.sleep(delay)
    if fail:
        # The demo's "make one host fail" switch: shows UPSTREAM_FAILED
        # propagating while the independent audit branch still runs.
        raise RuntimeError(f"provisioning {host} failed (demo failure on request)")
    return {"host": host, "provisioned": True}


@shared_task(name="demo.check")
def check(host, delay=0.2):
    time.sleep(delay)
    return {"host": host, "latency_ms": 10 + sum(map(ord, host)) % 40}


@shared_task(name="demo.summarize")
def summarize(checks, delay=0.2):
    """Chord body: in pass-results mode it receives the list of the header's results."""
    time.sleep(delay)
    latencies = [c["latency_ms"] for c in checks]
    return {"hosts": len(checks), "max_latency_ms": max(latencies, default=0)}


@shared_task(name="demo.audit")
def audit(delay=0.2):
    time.sleep(delay)
    return "audit log written"


@shared_task(name="demo.notify")
def notify(channel, delay=0.2):
    time.sleep(delay)
    return f"notified #{channel}"


@shared_task(name="demo.build_release")
def build_release(version, delay=0.2):
    time.sleep(delay)
    return f"release-{version}.tar.gz"


@shared_task(name="demo.decide")
def decide(answer):
    """The branch after the approval: receives the wait's payload (pass-results mode), returns a path key."""
    return "publish" if isinstance(answer, dict) and answer.get("approved") else "roll back"


@shared_task(name="demo.publish_release")
def publish_release(version, delay=0.2):
    time.sleep(delay)
    return f"published {version}"


@shared_task(name="demo.roll_back")
def roll_back(version, delay=0.2):
    time.sleep(delay)
    return f"rolled back {version}"
