"""Forms in English and Spanish (Fluent): prompts, help, options and every check's message; the locale from
--locale or LANG; a broken bundle is a validate error with its line."""

from __future__ import annotations

from reconcilers.forms.i18n import Localizer, pick_locale
from reconcilers.forms.reconciler import load_forms
from tests.reconcilers.forms.conftest import OpsRepo


def test_the_template_form_speaks_spanish(ops: OpsRepo) -> None:
    """Every element of local-service has a Spanish prompt; errors and constraint messages too."""
    session = ops.session(locale="es")
    try:
        text = session.text
        assert text.locale == "es"
        for element in session.form.elements:
            assert text.prompt(element) != element.prompt, element.name
        assert text.form_title(session.form) == "Un nuevo servicio local"
        runtime = session.form.element("runtime")
        assert runtime is not None and text.option(runtime, "command", "x") == "Una orden propia"
        errors = session.check({"name": "web", "port": 80, "workers": 17, "runtime": "command", "owner": "x"}).errors
        assert {k: text.error(v) for k, v in errors.items()} == {
            "port": "debe ser al menos 1024", "command": "es obligatorio"}
        errors = session.check({"name": "web", "port": 8080, "workers": 17, "owner": "x", "runtime": "python"}).errors
        assert text.error(errors["constraint workers_fit_port"]).startswith("más de 16 procesos")
    finally:
        session.close()


def test_english_is_the_forms_own_text() -> None:
    """Without a bundle message the form's text stays; English errors are the checks' own."""
    assert Localizer("en").get("error-min", "fallback", min=3) == "must be at least 3"
    assert Localizer("en").get("no-such-message", "fallback") == "fallback"


def test_the_locale_comes_from_the_flag_else_lang() -> None:
    """--locale wins; LANG=es_ES.UTF-8 gives es; an unknown language gives English."""
    assert pick_locale("es", environ={"LANG": "en_US.UTF-8"}) == "es"
    assert pick_locale(None, environ={"LANG": "es_ES.UTF-8"}) == "es"
    assert pick_locale(None, environ={"LANG": "fr_FR.UTF-8"}) == "en"
    assert pick_locale(None, environ={}) == "en"


def test_a_broken_bundle_is_a_validate_error_with_its_line(ops: OpsRepo) -> None:
    """A line that is not Fluent in forms/locales/es/local-service.ftl: located problem; the form is refused."""
    path = ops.work.path / "forms/locales/es/local-service.ftl"
    lines = path.read_text().splitlines()
    lines.insert(3, "this is not fluent")
    path.write_text("\n".join(lines) + "\n")
    ops.work.commit(message="break the bundle")
    loaded = load_forms(ops.source.snapshot("main"))
    assert [(p.path, p.line) for p in loaded.problems] == [("forms/locales/es/local-service.ftl", 4)]
    assert "local-service" not in loaded.forms


def test_a_bundle_nested_too_deeply_is_a_problem_not_a_crash(ops: OpsRepo) -> None:
    """30,000 nested placeables overflow the Fluent parser's recursion: refused with the file named."""
    ops.work.commit({"forms/locales/es/local-service.ftl": "x = " + "{" * 30_000}, message="deep")
    loaded = load_forms(ops.source.snapshot("main"))
    assert [(p.path, p.message) for p in loaded.problems] == [
        ("forms/locales/es/local-service.ftl", "Fluent: placeables nested too deeply")]
