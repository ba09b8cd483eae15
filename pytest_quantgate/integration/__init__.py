"""The pytest integration: hook bodies, options, fixtures, the worker and controller plugins, xdist."""
