from django import forms


class StartDemoForm(forms.Form):
    hosts = forms.IntegerField(
        min_value=1, max_value=50, initial=4,
        help_text="Hosts to provision: the group and the chord header get one task per host.",
    )
    delay = forms.FloatField(
        min_value=0, max_value=10, initial=0.5, help_text="Seconds each task sleeps.",
    )
    fail = forms.BooleanField(
        required=False, help_text="Make the last host's provisioning raise.",
    )
