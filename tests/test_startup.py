"""nerfstudio's external-method check, as patched by ``nerfqat_plugin.startup``: same answers, no stack scan."""

from __future__ import annotations

import inspect

import pytest
from nerfstudio.configs import external_methods

import nerfqat_plugin.registration  # noqa: F401  (applies the patch, as nerfstudio's plugin discovery does)
from nerfqat_plugin import startup


def test_method_list_is_built_without_reading_the_stack(monkeypatch: pytest.MonkeyPatch):
    def no_stack(*args, **kwargs):
        raise AssertionError("inspect.stack() called")

    monkeypatch.setattr(inspect, "stack", no_stack)
    configs, descriptions = external_methods.get_external_methods()
    assert len(configs) == sum(len(m.configurations) for m in external_methods.external_methods) > 0
    assert all(d.startswith("[External") for d in descriptions.values())


def test_a_dummy_made_elsewhere_still_shows_its_install_instructions_and_exits(capsys: pytest.CaptureFixture):
    method = external_methods.ExternalMethod("how to install it: NOTHING-TO-INSTALL", [("x", "y")])
    with pytest.raises(SystemExit) as exit_:
        external_methods.ExternalMethodDummyTrainerConfig(method_name="x", method=method)
    assert exit_.value.code == 0
    assert "NOTHING-TO-INSTALL" in capsys.readouterr().out


def test_patch_is_applied_once():
    startup.patch_external_method_check()
    startup.patch_external_method_check()
    assert external_methods.ExternalMethodDummyTrainerConfig.__post_init__ is startup._post_init
