"""What the scripts and tests share to drive nerf-qat: presets, runners, tiny scenes, a browser driver for the viewer.

Not needed to use the plugin; installed with it so that ``scripts/`` and ``tests/`` import one definition of each.
"""
