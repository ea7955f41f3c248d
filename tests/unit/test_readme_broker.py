"""The README's settings block names the broker before it says "Nothing else"."""

import re

from tests.conftest import python_block_after


def test_readme_settings__set_the_broker_from_the_environment_before_nothing_else():
    block = python_block_after("# settings.py")
    broker = re.search(r'^CELERY_BROKER_URL = os\.environ\.get\("CELERY_BROKER_URL", "redis://[^"]+"\)$', block, re.M)
    assert broker, block
    assert "import os" in block.split("CELERY_BROKER_URL")[0]
    assert broker.start() < block.index("# Nothing else")
