"""docs/comparison.md does not deny what landed: the JSON API, validated parameters, scheduled starts."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def our_column(feature):
    page = (ROOT / "docs" / "comparison.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith(f"| {feature} |"))
    return row.strip("|").split("|")[-1].strip()


def test_comparison__landed_features_are_yes_for_django_dyrygent():
    for feature in ("REST API", "payload validation", "periodic workflows"):
        assert our_column(feature).startswith("Y "), (feature, our_column(feature))


def test_api_docs__not_built_list_names_nothing_that_landed():
    page = (ROOT / "docs" / "api.md").read_text()
    not_built = page.split("## Not built (yet)", 1)[1].split("\n## ", 1)[0].split("(A JSON API")[0]
    for landed in ("REST API", "periodic"):
        assert landed not in not_built, landed
