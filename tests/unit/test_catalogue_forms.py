"""Forms built from a factory's type hints: labels, help from the docstring, date widgets, errors naming the format."""

import datetime

from django_dyrygent.catalogue import arg_help, form_from_signature


def audit(day: datetime.date, at: datetime.datetime | None = None, delay: int = 5, region: str = "eu") -> None:
    """Audit one day.

    Args:
        day: the day to audit.
        at (datetime): when to start;
            blank: now.
        delay: seconds between two checks.

    Returns:
        Nothing.
    """


def test_arg_help__reads_the_args_section_with_its_continuation_lines_and_stops_at_the_next():
    assert arg_help(audit) == {"day": "the day to audit.", "at": "when to start; blank: now.",
                               "delay": "seconds between two checks."}


def test_form_from_signature__labels_and_help_texts_come_from_names_and_docstring():
    form = form_from_signature("tests.audit", audit)()
    assert form.fields["day"].label == "Day" and form.fields["day"].help_text == "the day to audit."
    assert form.fields["region"].help_text == ""  # no docstring line, no type help for text


def test_form_from_signature__date_fields_get_the_browsers_picker_and_errors_name_the_format():
    form_class = form_from_signature("tests.audit", audit)
    html = form_class().as_p()
    assert 'type="date" name="day"' in html and 'type="datetime-local" name="at"' in html
    form = form_class({"day": "12.2026", "at": "soon"})
    assert not form.is_valid()
    assert form.errors["day"] == ["Enter a date as YYYY-MM-DD, e.g. 2026-12-07."]
    assert form.errors["at"] == ["Enter a date and time as YYYY-MM-DD HH:MM[:SS], e.g. 2026-12-07 14:30."]


def test_form_from_signature__the_pickers_values_are_accepted():
    form = form_from_signature("tests.audit", audit)({"day": "2026-12-07", "at": "2026-12-07T14:30"})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["day"] == datetime.date(2026, 12, 7)
    assert form.cleaned_data["at"].replace(tzinfo=None) == datetime.datetime(2026, 12, 7, 14, 30)
