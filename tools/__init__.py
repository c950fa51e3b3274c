"""tissuetalk's typed analysis library.

One module per capability; each tool is a plain function over AnnData with a pydantic parameter
model and a small pydantic result model, registered in :mod:`tools.registry` so the agent (and its
offline planner) can see it. Heavy imports happen inside functions.
"""
