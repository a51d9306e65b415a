"""Typed parameters, one module per ``conf/base/parameters_<pipeline>.yml``.

Kedro builds these dataclasses from ``params:<pipeline>`` before any node runs, so an impossible
value stops a run at once with a message that names it.
"""
