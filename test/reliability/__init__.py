"""The reliability suite: fuzzing, hostile sizes, soak, flood, injected faults and untrusted files.

Quick tests run in the default suite; the long ones are marked ``reliability`` and run with
``bash scripts/dev.sh reliability`` (``pytest -m reliability --run-reliability``). The figures
they measure are printed at the end of the run and written to ``$SEG_ROS_FIGURES`` when set;
docs/RELIABILITY.md reports them.
"""
