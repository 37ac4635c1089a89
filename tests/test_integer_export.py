"""Both methods' models implement the one export protocol that ns-export-int8 writes through."""

from __future__ import annotations

import inspect

import pytest

from nerfqat_plugin.integer_export import IntegerExport
from nerfqat_plugin.nerf.model import NeRFQATModel
from nerfqat_plugin.nerfacto.model import NerfactoQATModel

MEMBERS = [name for name, value in vars(IntegerExport).items() if inspect.isfunction(value) and name[0] != "_"]


@pytest.mark.parametrize("model_class", [NeRFQATModel, NerfactoQATModel])
def test_model_class_implements_every_member_with_its_signature(model_class):
    assert len(MEMBERS) == 6
    for name in MEMBERS:
        ours, protocol = getattr(model_class, name), getattr(IntegerExport, name)
        assert inspect.signature(ours).parameters.keys() == inspect.signature(protocol).parameters.keys(), name
