#!/usr/bin/env bash
# Build the sdist and the wheel, check them (contents, twine check), install the wheel
# into a clean venv and run a workflow on a real Celery worker against the installed
# package, from a project outside the checkout (.ci/smoke_project, copied to a temp dir).
#
#   bash .ci/wheel_smoke.sh          (PYTHON=python3.12 to pick the interpreter)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/dyrygent-wheel.XXXXXX)
WORKER_PID=
cleanup() {
    if [ -n "$WORKER_PID" ] && kill -0 "$WORKER_PID" 2>/dev/null; then
        kill -TERM "$WORKER_PID"
        for _ in $(seq 1 40); do kill -0 "$WORKER_PID" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$WORKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== build (sdist + wheel)"
"$PY" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q build twine
"$WORK/tools/bin/python" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; exit 1; }
"$WORK/tools/bin/python" -m twine check --strict "$WORK"/dist/*
"$WORK/tools/bin/python" "$ROOT/.ci/check_dist.py" "$WORK/dist"

echo "== install the wheel into a clean venv"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "$WORK"/dist/*.whl
cp -r "$ROOT/.ci/smoke_project" "$WORK/project"
cd "$WORK/project"
export SMOKE_VAR_DIR="$WORK/var" PYTHONDONTWRITEBYTECODE=1
mkdir -p "$SMOKE_VAR_DIR"
PYBIN="$WORK/venv/bin"
# The package must come from the venv, not from the checkout.
"$PYBIN/python" - "$ROOT" <<'PYCODE'
import sys
from pathlib import Path
import django_dyrygent
where = Path(django_dyrygent.__file__).resolve()
assert "site-packages" in where.parts and Path(sys.argv[1]).resolve() not in where.parents, where
print(f"django_dyrygent {django_dyrygent.__version__} from {where.parent}")
PYCODE

echo "== migrate, check, static files, templates"
"$PYBIN/python" manage.py migrate --noinput -v 0
"$PYBIN/python" manage.py makemigrations django_dyrygent --check --dry-run
"$PYBIN/python" manage.py check --fail-level WARNING
"$PYBIN/python" manage.py findstatic django_dyrygent/dag.css django_dyrygent/dag.js -v 0

echo "== a workflow on a real worker"
"$PYBIN/celery" -A smoke worker -P prefork -c 2 -l WARNING --without-gossip --without-mingle \
    --without-heartbeat >"$WORK/worker.log" 2>&1 &
WORKER_PID=$!
if ! timeout 120 "$PYBIN/python" manage.py dyrygent_run smoke.tasks.workflow --pass-results --wait --timeout 90 \
        >"$WORK/run.log" 2>&1; then
    cat "$WORK/run.log" "$WORK/worker.log"
    exit 1
fi
cat "$WORK/run.log"
WF=$(head -n1 "$WORK/run.log")
"$PYBIN/python" manage.py shell -c "
from django_dyrygent.models import Workflow
wf = Workflow.objects.get(pk='$WF')
final = wf.nodes.get(task_name='smoke.tasks.total')
# total() got the chord header's results: 0 + 2 + 4 + 6.
assert wf.state == 'SUCCESS' and final.result == 12, (wf.state, final.result)
print('workflow', wf.state, '- total() returned', final.result)
"
# The admin's picture: renders the shipped dag.svg template.
"$PYBIN/python" manage.py dyrygent_graph "$WF" --format svg -o "$WORK/dag.svg"
grep -q "<svg" "$WORK/dag.svg"
echo "wheel smoke: ok"
