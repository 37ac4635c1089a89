"""The viewer's start camera for forward-facing scenes: placed on the client's first camera report, placed again
when a report the client sent before it applied the placement arrives, left alone once the client has moved on."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import numpy as np
import torch

from nerfqat_plugin.datamanager import StartCamera


class _Camera:
    """What StartCamera uses of a viser camera handle: setters that move the server-side state at once."""

    def __init__(self, client) -> None:
        self.client = client
        self.callbacks = []
        self.position = np.zeros(3)
        self.wxyz = np.array([1.0, 0.0, 0.0, 0.0])
        self.fov = 1.0
        self.look_at = np.array([0.0, 0.0, -1.0])
        self.up_direction = np.array([0.0, 1.0, 0.0])

    def on_update(self, callback):
        self.callbacks.append(callback)
        return callback

    def report(self, position, wxyz) -> None:
        """The client sends its camera: the handle takes it, then the callbacks run (as viser does)."""
        self.position, self.wxyz = np.asarray(position, float), np.asarray(wxyz, float)
        for callback in self.callbacks:
            callback(self)


class _Machine:
    def __init__(self) -> None:
        self.actions = []

    def action(self, action) -> None:
        self.actions.append(action)


def _connected():
    client = SimpleNamespace(client_id=7, atomic=contextlib.nullcontext)
    client.camera = _Camera(client)
    machine = _Machine()
    viewer = SimpleNamespace(
        ready=True,
        render_statemachines={7: machine},
        camera_handles={},
        get_camera_state=lambda c: ("state", tuple(c.camera.position)),
    )
    c2w = torch.eye(4)[:3]
    c2w[:, 3] = torch.tensor([0.5, 0.25, 1.0])
    start = StartCamera(c2w, 0.8, index=0)
    start.viewer = viewer
    start._on_connect(client)
    return start, client.camera, machine


def test_start_camera_is_placed_again_after_a_stale_report_and_then_left_to_the_user():
    from nerfstudio.viewer.viewer import VISER_NERFSTUDIO_SCALE_RATIO

    start, camera, machine = _connected()
    target = start.camera_to_world[:3, 3] * VISER_NERFSTUDIO_SCALE_RATIO
    default = ([3.0, 2.0, 1.0], [0.0, 1.0, 0.0, 0.0])
    camera.report(*default)  # first report: placed, and a render from the placed camera is asked for
    assert np.allclose(camera.position, target) and camera.fov == 0.8
    assert [a.action for a in machine.actions] == ["move"]
    assert machine.actions[0].camera_state == ("state", tuple(target))
    camera.report(*default)  # sent before the client applied the placement: it would undo it
    assert np.allclose(camera.position, target) and len(machine.actions) == 2
    camera.report(target, [0.0, 1.0, 0.0, 0.0])  # the client shows the placed camera
    user = ([9.0, 9.0, 9.0], [1.0, 0.0, 0.0, 0.0])
    camera.report(*user)
    camera.report(*default)  # the user may go anywhere, the default view included
    assert np.allclose(camera.position, default[0]) and len(machine.actions) == 2


def test_start_camera_leaves_a_user_who_moved_before_any_echo():
    start, camera, machine = _connected()
    camera.report([3.0, 2.0, 1.0], [0.0, 1.0, 0.0, 0.0])
    camera.report([4.0, 2.0, 1.0], [0.0, 1.0, 0.0, 0.0])  # neither the default nor the placed camera
    assert np.allclose(camera.position, [4.0, 2.0, 1.0]) and len(machine.actions) == 1
