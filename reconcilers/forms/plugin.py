"""The forms reconciler as a plugin (entry point `forms`), with the `stratum form` verbs; its web backend is
mounted on the daemon's listener at /forms/ through the reconciler's `http_mounts()`."""

from __future__ import annotations

from reconcilers.plugin import Plugin, Preload, Verb

PLUGIN = Plugin(
    name="forms",
    reconciler="reconcilers.forms.reconciler:FormsReconciler",
    verbs=(Verb("form", "reconcilers.forms.cli:form",
                "Forms that generate infrastructure: fill one, get a reviewable branch."),),
    order=60,
    preload=(Preload("forms", ("fluent.syntax",)),),      # the forms' locales are parsed when loaded
)
