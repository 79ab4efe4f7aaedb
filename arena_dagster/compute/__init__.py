"""Where the heavy steps run: in the step's own process (`engine: local`) or on a Ray cluster (`engine: ray`).

`settings.py` is the profile's `compute` section; `cluster.py` is the one seam every heavy step
goes through to reach the cluster (joined, or started for the run's life). No Dagster here:
`defs/compute.py` wraps the seam in a resource built on dagster-ray.
"""
