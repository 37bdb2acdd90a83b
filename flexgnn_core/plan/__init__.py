"""Planning, one way: a ``Problem`` (plain values) -> a solver -> a ``Plan`` (a value, feasible or not).

- ``problem``: ``Problem``, ``Budgets``, the intermediates of an epoch, ``Plan``;
- ``chunking``: how P chunks cut the graph and the chunk statistics per P;
- ``simulate``: a plan's peaks per tier and bytes per link (apart from plan generation);
- ``cost``: measured rates (``Hardware``) and the predicted epoch time of a plan;
- ``solvers`` (imported on its own: ``from flexgnn_core.plan import solvers``): every policy with one signature.

Importing this package does not load the solvers (scipy's MILP) nor the calibration: the engine imports the plan
types from here and executes plans only.
"""

from flexgnn_core.plan.problem import (FLOAT, ORDER_RULES, ORDERS, PLACEMENTS, Budgets, Intermediate, Plan,
                                       Problem, check_placement, fixed_device_bytes, free_orders, intermediates,
                                       layer_orders, transform_width, working_set_bytes)
from flexgnn_core.plan.simulate import custom_plan, link_terms, make_plan, simulate

__all__ = ["FLOAT", "ORDER_RULES", "ORDERS", "PLACEMENTS", "Budgets", "Intermediate", "Plan", "Problem",
           "check_placement", "custom_plan", "fixed_device_bytes", "free_orders", "intermediates", "layer_orders",
           "link_terms", "make_plan", "simulate", "transform_width", "working_set_bytes"]
